# make demo: set up the environment, edit a toy-world scene with the trained toy model, then run the
#            pipeline on a bundled real clip with a tiny random checkpoint.
# make test: the test suite (CPU, tiny models, offline).
# make ui: the web UI on 127.0.0.1.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)

# Without a GPU, pin the CPU build of torch and the versions verified together (constraints-cpu.txt);
# with one, keep whatever torch the machine has and install the ranges of requirements.txt.
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_CUDA),yes)
PIP_CONSTRAINTS :=
else
PIP_CONSTRAINTS := -c constraints-cpu.txt
endif
# Hopper GPUs (compute capability 9.0) also get FlashAttention-3's prebuilt forward kernels (fa3-fwd).
GPU_CAPABILITY := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
ifeq ($(GPU_CAPABILITY),9.0)
GPU_REQUIREMENTS := -r requirements-gpu.txt
endif

.PHONY: demo test venv clean browser-deps ui

venv: $(STAMP)

$(STAMP): requirements.txt requirements-ui.txt requirements-gpu.txt constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-ui.txt \
		$(GPU_REQUIREMENTS) $(PIP_CONSTRAINTS)
	touch $(STAMP)

DEMO := demo_out
CLIP := tests/data/kitten-turning-head
demo: $(STAMP) browser-deps
	@echo "== 1/4 a real edit with the trained toy-world model (assets/toyworld-ti2v): a rendered scene, its first"
	@echo "       frame recoloured and reshaped, scored against ground truth -> $(DEMO)/toyworld"
	$(PY) -m wan.toyworld.demo --out_dir $(DEMO)/toyworld
	@echo "== 2/4 tiny TI2V-5B checkpoint (official layout, RANDOM weights: a pipeline check) -> $(DEMO)/ckpt"
	test -f $(DEMO)/ckpt/config.json || $(PY) -m wan.tools.make_tiny_checkpoint --task ti2v-5B $(DEMO)/ckpt
	@echo "== 3/4 inversion edit of a real clip with the random tiny model: kitten -> dog (pipeline check)"
	$(PY) ti2v_inversion_edit.py --ckpt_dir $(DEMO)/ckpt --video $(CLIP)/source.mp4 \
		--source_prompt "A kitten turning its head on a wooden floor" \
		--target_prompt "A dog turning its head on a wooden floor" \
		--target_image $(CLIP)/edited_first_frame.png --frame_num 13 --max_area 36864 \
		--inversion_steps 10 --generation_steps 10 --inversion_scheme fixed_point --comparison \
		--save_inversion $(DEMO)/kitten_inversion.safetensors --output $(DEMO)/kitten_to_dog.mp4
	@echo "== 4/4 text+image-to-video from the edited frame with the random tiny model (pipeline check)"
	$(PY) generate.py --task ti2v-5B --ckpt_dir $(DEMO)/ckpt --image $(CLIP)/edited_first_frame.png \
		--prompt "A dog turning its head on a wooden floor" --size 192*192 --frame_num 17 \
		--sample_steps 10 --base_seed 42 --save_file $(DEMO)/dog_ti2v.mp4
	@echo "Outputs (toyworld/: the trained toy model; the rest: random tiny weights, a pipeline check):"
	@ls -1 $(DEMO)/toyworld/*.mp4 $(DEMO)/*.mp4 $(DEMO)/*.png $(DEMO)/*.safetensors

# Debian's chromium (browser tests, reports) and ffmpeg: installed with apt as root when missing.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ffmpeg) \
		|| echo "note: apt-get could not install chromium/ffmpeg; the browser tests will be skipped"; \
	else echo "note: chromium/ffmpeg missing and no apt-get as root; the browser tests will be skipped"; fi

test: $(STAMP) browser-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=10

# make ui: the web UI (docs/UI.md) on 127.0.0.1:7860; UI_ARGS="--ckpt_dir DIR --port 7861" for more.
UI_ARGS ?=
ui: $(STAMP)
	$(PY) -m wan.ui $(UI_ARGS)

clean:
	rm -rf demo_out
