"""Block-level weight streaming (wan.streaming): the schedule of copies, the same numbers as the
resident model (plain, with the step cache, compiled), and on a GPU the same bits at a lower peak."""
import pytest
import torch

from wan.modules.model import WanModel
from wan.step_cache import enable_step_cache
from wan.streaming import is_streamed, stream_blocks

SMALL = dict(model_type="t2v", in_dim=4, out_dim=4, dim=64, ffn_dim=128, freq_dim=32, text_dim=16, num_heads=4,
             text_len=8)


def small_model(layers=3, seed=0, **overrides):
    torch.manual_seed(seed)
    model = WanModel(**{**SMALL, "num_layers": layers, **overrides}).eval().requires_grad_(False)
    for p in model.parameters():  # away from the init's zeros and ones, so every tensor matters
        p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(seed=1, frames=2):
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(4, frames, 4, 4, generator=gen)]
    context = [torch.randn(5, 16, generator=gen), torch.randn(7, 16, generator=gen)]
    return x, context, frames * 4


def forward(model, t=700.0, seed=1):
    x, context, seq_len = inputs(seed)
    with torch.no_grad():
        return torch.stack(model(x, t=torch.tensor([t]), context=context, seq_len=seq_len))


def check_schedule(events, blocks, slots, passes):
    """Every run uses the slot its block was last loaded into, with nothing loaded there since; a
    slot is loaded only after its previous block is done; the next block's load is issued before a
    block runs; at most `slots` slots; each pass runs the blocks in order."""
    loaded_into, busy, used = {}, {}, set()
    runs = []
    for position, (what, block, slot) in enumerate(events):
        used.add(slot)
        if what == "load":
            assert busy.get(slot) is None, f"slot {slot} refilled while block {busy.get(slot)} ran: {events}"
            for other, where in list(loaded_into.items()):
                if where == slot:
                    del loaded_into[other]
            loaded_into[block] = slot
        elif what == "run":
            assert loaded_into.get(block) == slot, f"block {block} ran from slot {slot}: {events}"
            following = (block + 1) % blocks
            assert following in loaded_into, f"block {following} not queued before block {block} ran: {events}"
            busy[slot] = block
            runs.append(block)
        else:
            assert busy.pop(slot) == block
    assert len(used) <= slots
    assert runs == list(range(blocks)) * passes


@pytest.mark.parametrize("layers, slots", [(3, 2), (4, 2), (5, 3)])
def test_schedule_and_numbers_equal_the_resident_model(layers, slots):
    """Streamed (on the CPU: synchronous copies) the forward gives the resident model's bits, twice
    in a row (the second starts from the block 0 the first forward prefetched), with the copies in
    the order the GPU overlaps them."""
    model = small_model(layers)
    expected = [forward(model, 700.0, 1), forward(model, 300.0, 2)]
    names = {k: v.clone() for k, v in model.state_dict().items()}
    streamer = stream_blocks(model, "cpu", slots=slots, min_bytes=64 * 64 * 4, record=True)
    assert is_streamed(model) and len(streamer.entries[0]) == 10  # 2 x (q, k, v, o) and the feed-forward weights
    got = [forward(model, 700.0, 1), forward(model, 300.0, 2)]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    check_schedule(streamer.events, layers, slots, passes=2)
    # Between forwards Python sees the host copies: the state dict is unchanged.
    state = model.state_dict()
    assert state.keys() == names.keys() and all(torch.equal(state[k], names[k]) for k in names)
    streamer.remove()
    assert not is_streamed(model) and torch.equal(forward(model, 700.0, 1), expected[0])


def test_blocks_called_out_of_order_run_on_their_own_weights():
    """A seam wrapper may call blocks in any order: a block is never replaced in its slot by the
    prefetch issued just before it runs (round robin would come back to its slot here)."""
    order = [0, 3, 1, 0, 2, 2, 3]

    def shuffled(model):
        def run_blocks(hidden, e0, seq_lens, rope, context, t):
            for index in order:
                hidden = model.blocks[index](hidden, e0, seq_lens, rope, context)
            return hidden
        model.run_blocks = run_blocks
        return model

    expected = forward(shuffled(small_model(4)))
    model = shuffled(small_model(4))
    stream_blocks(model, "cpu", slots=3, min_bytes=64 * 64 * 4)
    assert torch.equal(forward(model), expected)


def test_only_large_tensors_stream():
    model = small_model(2)
    streamer = stream_blocks(model, "cpu", min_bytes=64 * 128 * 4)  # the feed-forward weights only
    assert [tuple(e.host.shape) for e in streamer.entries[0]] == [(128, 64), (64, 128)]
    streamer.remove()


def test_step_cache_reads_block_zero_while_streamed():
    """The step cache reads block 0's modulation outside the block's forward; it stays resident."""
    def run(model):
        enable_step_cache(model, 0.5)
        return [forward(model, t, 1) for t in (900.0, 880.0, 860.0)]

    expected = run(small_model(3))
    model = small_model(3)
    stream_blocks(model, "cpu", min_bytes=64 * 64 * 4)
    for a, b in zip(run(model), expected):
        assert torch.equal(a, b)


def test_fp8_linears_stream_their_buffers():
    """FP8 linears keep their weights in buffers (float8 values and fp32 scales): streamed too."""
    expected = forward(small_model(3).quantize_fp8())
    model = small_model(3).quantize_fp8()
    streamer = stream_blocks(model, "cpu", min_bytes=64 * 64)
    assert {e.host.dtype for e in streamer.entries[0]} == {torch.float8_e4m3fn}
    assert all(e.kind == "buffer" for e in streamer.entries[0])
    assert torch.equal(forward(model), expected)


def test_compiled_blocks_stream_without_recompiling():
    """Compiled sublayers read the slot tensors as inputs: the same values as the compiled resident
    model, and no recompilation from one block, slot or forward to the next."""
    compilations = []

    def counting_backend(graph, example_inputs):
        compilations.append(graph)
        return graph

    resident = small_model(3).compile_blocks(backend=counting_backend)
    expected = forward(resident, 700.0, 1)
    torch._dynamo.reset()
    compilations.clear()
    model = small_model(3).compile_blocks(backend=counting_backend)
    stream_blocks(model, "cpu", min_bytes=64 * 64 * 4)
    first = forward(model, 700.0, 1)
    count = len(compilations)
    with torch.compiler.set_stance("fail_on_recompile"):
        again = forward(model, 700.0, 1)
    assert torch.equal(first, expected) and torch.equal(again, expected) and count == len(compilations) > 0
    torch._dynamo.reset()


def test_bad_uses_are_refused():
    model = small_model(2)
    with pytest.raises(ValueError, match="slots must be at least 2"):
        stream_blocks(model, "cpu", slots=1)
    stream_blocks(model, "cpu")
    with pytest.raises(ValueError, match="already streamed"):
        stream_blocks(model, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_on_the_gpu_the_same_bits_at_a_fraction_of_the_weights(compiled):
    """bf16 on the GPU, the copies on a side stream: bit for bit the resident output, and the
    forward's peak holds two blocks' weights instead of all of them."""
    config = dict(model_type="t2v", in_dim=16, out_dim=16, dim=1024, ffn_dim=4096, freq_dim=256, text_dim=64,
                  num_heads=8, num_layers=24, text_len=32)
    torch.manual_seed(0)
    model = WanModel(**config).eval().requires_grad_(False).to(torch.bfloat16)
    if compiled:
        model.compile_blocks()
    gen = torch.Generator().manual_seed(1)
    x = [torch.randn(16, 5, 32, 32, generator=gen).cuda()]
    context = [torch.randn(20, 64, generator=gen).cuda()] * 2
    seq_len = 5 * 16 * 16

    def run():
        with torch.no_grad():
            return torch.stack(model(x, t=torch.tensor([600.0]), context=context, seq_len=seq_len))

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model.cuda()
    expected = run()
    model.cpu()
    torch.cuda.empty_cache()
    stream_blocks(model, "cuda")
    run()  # compile (if compiled) and warm up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    got = run()
    torch.cuda.synchronize()
    assert torch.equal(got, expected)
    # Two of the 24 blocks' weights, the other layers, activations and workspaces: well under half the model.
    assert torch.cuda.max_memory_allocated() < weights / 2
    torch._dynamo.reset()
