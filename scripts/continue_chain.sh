#!/usr/bin/env bash
# A long video by chained continuation, as the seed chain script runs it: video i continues the last
# frame of video i-1, captioned by a VLM (InternVL3.5-8B by default, from a folder or the local
# Hugging Face cache); a rerun resumes after the last finished video.
#
#   scripts/continue_chain.sh input.mp4 ./Wan2.2-I2V-A14B [output_dir] [extra generate_continuous.py flags...]
#   NUM_VIDEOS=4 scripts/continue_chain.sh input.mp4 ./Wan2.2-TI2V-5B runs/chain --task v2v-5B
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 VIDEO CKPT_DIR [OUTPUT_DIR] [generate_continuous.py flags...]" >&2
  exit 2
fi
video=$1 ckpt=$2 out=${3:-./continuous_outputs}
shift $(( $# >= 3 ? 3 : 2 ))
python="${PYTHON:-.venv/bin/python}"
"$python" generate_continuous.py --video "$video" --ckpt_dir "$ckpt" --output_dir "$out" \
  --num_videos "${NUM_VIDEOS:-12}" --base_seed "${SEED:-42}" --custom_prompt "${PREFIX:-continue video}" "$@"
echo "chain: $(ls "$out"/video_*.mp4 | wc -l) videos, prompts in $out/prompts_log.txt, stitched: $out/stitched_video.mp4"
