"""The streamed pair store (``surf_accel.training.pair_store``): shards hold exactly the pairs that
``make_pairs`` makes over the whole clip set and the embeddings ``encode_prompt`` gives each caption
alone; every process makes only its share and a finished shard is never made again; the micro-batch
order covers every pair once per epoch across processes, and a resumed order is the tail of the
uninterrupted one; worker processes read the same batches as the training process."""

import json

import pytest
import torch
from safetensors import safe_open

from surf_accel.integrations.wan import WanAdapter
from surf_accel.training.config import PairsConfig
from surf_accel.training.data import encode_captions, toy_source
from surf_accel.training.pair_store import MicroBatches, PairDataset, PairStore, loader, pad_text, trim_text
from surf_accel.training.pairs import make_pairs

CFG = PairsConfig(preview_height=32, preview_width=32, handoff="latent", compression="jpeg")
LENGTH = 16


@pytest.fixture(scope="module")
def toy_pipe():
    from surf_accel.toyworld import load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _store(pipe, clips, folder, shard_size, calls=None):
    store = PairStore(folder, {"test": 1, "n": len(clips)}, len(clips), shard_size)

    def make(start, stop):
        if calls is not None:
            calls.append((start, stop))
        return make_pairs(pipe, WanAdapter(), clips, CFG, 5, start=start, stop=stop), clips.captions[start:stop]

    return store, make, (lambda caps: encode_captions(pipe, caps, LENGTH))


def test_text_trim_and_pad_are_lossless(toy_pipe):
    with torch.no_grad():
        emb, _ = toy_pipe.encode_prompt(["a red circle moving left"], do_classifier_free_guidance=False,
                                        max_sequence_length=LENGTH)
    trimmed = trim_text(emb[0])
    assert 1 <= trimmed.shape[0] < LENGTH  # the caption is shorter than the padded length
    assert torch.equal(pad_text(trimmed, LENGTH), emb[0].float())
    inner = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.equal(trim_text(inner), inner[:3])  # a zero row before the last token is kept
    assert trim_text(torch.zeros(3, 2)).shape == (1, 2)


def test_shards_hold_the_pairs_and_captions_of_the_whole_set(toy_pipe, tmp_path):
    clips = toy_source(7, seed=2, size=(64, 64), num_frames=5)
    store, make, encode = _store(toy_pipe, clips, tmp_path / "s", shard_size=3)
    assert store.num_shards == 3
    assert store.make(make, encode, {"r": 1}) == [0, 1, 2]
    store.finish({"r": 1})
    want = make_pairs(toy_pipe, WanAdapter(), clips, CFG, 5)  # one range over every clip: the oracle
    ds = PairDataset([store], LENGTH)
    assert len(ds) == 7
    for i in range(7):
        z_hr, z_lr, text = ds[(i, 2)]
        assert torch.equal(z_hr, want["z_hr"][i, :, :2]) and torch.equal(z_lr, want["z_lr"][i, :, :2])
        with torch.no_grad():  # as the pipeline encodes (grad mode takes other CPU kernels)
            alone, _ = toy_pipe.encode_prompt([clips.captions[i]], do_classifier_free_guidance=False,
                                              max_sequence_length=LENGTH)
        assert torch.equal(text, alone[0].float())
    with safe_open(str(store.shard_path(2)), "pt") as f:
        assert f.get_tensor("z_hr").shape[0] == 1 and json.loads(f.metadata()["span"]) == [6, 7]
        assert torch.equal(f.get_tensor("degradation"), want["degradation"][6:])
    index = json.loads((store.folder / "store.json").read_text())
    assert index["count"] == 7 and [s["pairs"] for s in index["shards"]] == [[0, 3], [3, 6], [6, 7]]
    whole = store.read_all(LENGTH)
    assert torch.equal(whole["z_lr"], want["z_lr"]) and whole["text"].shape == (7, LENGTH, 64)
    with pytest.raises(IndexError):
        ds[(7, 1)]


def test_each_process_makes_its_share_and_a_restart_redoes_only_what_is_missing(toy_pipe, tmp_path):
    clips = toy_source(5, seed=4, size=(64, 64), num_frames=5)
    calls = {0: [], 1: []}
    for rank in (0, 1):
        store, make, encode = _store(toy_pipe, clips, tmp_path / "s", 2, calls[rank])
        assert store.make(make, encode, {}, rank=rank, processes=2) == [[0, 2], [1]][rank]
    assert calls == {0: [(0, 2), (4, 5)], 1: [(2, 4)]}
    made_by = []
    for j in range(3):
        with safe_open(str(store.shard_path(j)), "pt") as f:
            made_by.append(f.metadata()["made_by"])
    assert made_by == ["0", "1", "0"]
    stamps = {j: store.shard_path(j).stat().st_mtime_ns for j in range(3)}
    store.shard_path(1).unlink()  # lost
    data = store.shard_path(2).read_bytes()
    store.shard_path(2).write_bytes(data[:len(data) // 2])  # killed while copying
    with pytest.raises(RuntimeError, match="shard 1 of 3"):
        store.finish({})
    again = {0: [], 1: []}
    for rank in (0, 1):
        store, make, encode = _store(toy_pipe, clips, tmp_path / "s", 2, again[rank])
        store.make(make, encode, {}, rank=rank, processes=2)
    assert again == {0: [(4, 5)], 1: [(2, 4)]}
    assert store.shard_path(0).stat().st_mtime_ns == stamps[0]
    other = PairStore(tmp_path / "s", {"test": 2, "n": 5}, 5, 2)  # another recipe: nothing of this store counts
    assert not any(other.shard_done(j) for j in range(3))
    store.finish({})


def _order(n, processes, start_step=0, phases=((6, 2, 3),), grad_accum=1, seed=0):
    return {r: list(MicroBatches(n, seed, phases, grad_accum, processes, r, start_step)) for r in range(processes)}


def test_micro_batches_cover_each_epoch_once_and_resume_mid_epoch():
    n = 12
    full = _order(n, 2, phases=((6, 2, 3),), grad_accum=1)
    assert all(len(v) == 6 for v in full.values())
    # steps interleave the processes: step k of process r takes draws 4k + 2r, 4k + 2r + 1
    draws = [p for k in range(6) for r in (0, 1) for p, _ in full[r][k]]
    assert sorted(draws[:12]) == list(range(12)) and sorted(draws[12:]) == list(range(12))
    assert draws[:12] != draws[12:] and draws[:12] != list(range(12))  # shuffled, and anew each epoch
    assert all(f == 3 for r in full for b in full[r] for _, f in b)
    resumed = _order(n, 2, start_step=4)  # mid-epoch 2
    assert all(resumed[r] == full[r][4:] for r in (0, 1))
    assert _order(n, 2, seed=1)[0] != full[0]


def test_micro_batches_follow_the_curriculum_and_accumulation():
    phases = ((2, 3, 1), (3, 2, 4))
    full = _order(10, 1, phases=phases, grad_accum=2)[0]
    assert [len(b) for b in full] == [3] * 4 + [2] * 6 and [b[0][1] for b in full] == [1] * 4 + [4] * 6
    draws = [p for b in full for p, _ in b]
    assert sorted(draws[:10]) == list(range(10))  # 24 draws: epoch 0, epoch 1, 4 of epoch 2
    assert sorted(draws[10:20]) == list(range(10))
    tail = _order(10, 1, start_step=3, phases=phases, grad_accum=2)[0]
    assert tail == full[6:] and len(MicroBatches(10, 0, phases, 2, 1, 0, 3)) == 4


def test_workers_read_the_same_batches(toy_pipe, tmp_path):
    clips = toy_source(5, seed=4, size=(64, 64), num_frames=5)
    store, make, encode = _store(toy_pipe, clips, tmp_path / "s", 2)
    store.make(make, encode, {})
    ds = PairDataset([store, store], LENGTH)  # two stores read as one sequence
    assert len(ds) == 10 and torch.equal(ds[(7, 2)][0], ds[(2, 2)][0])
    order = MicroBatches(len(ds), 3, ((4, 3, 2),), 1, 1, 0)
    alone = list(loader(ds, order, 0))
    assert len(alone) == 4 and alone[0][0].shape == (3, 8, 2, 16, 16) and alone[0][2].shape == (3, LENGTH, 64)
    for a, b in zip(alone, loader(ds, order, 2)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    first = [ds[item] for item in next(iter(order))]
    assert torch.equal(alone[0][1], torch.stack([f[1] for f in first]))


@pytest.mark.gpu
def test_pairs_made_on_the_gpu_match_the_cpus(tmp_path):
    """``train`` makes the pair store with the base pipeline on the process's GPU (``loop._pipeline_on``):
    the same pairs as on the CPU up to the VAE's float32 rounding on another device, and the pipeline is
    back on the CPU afterwards."""
    from surf_accel.toyworld import load_pipeline
    from surf_accel.training import config_from_dict
    from surf_accel.training.loop import _pipeline_on, prepare_data
    from tests.training.common import tiny_config

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    cfg = config_from_dict(tiny_config(tmp_path / "cpu", data={"num_clips": 4, "val_clips": 1}))
    cpu = prepare_data(cfg, pipe, WanAdapter())["train"]
    gcfg = config_from_dict(tiny_config(tmp_path / "gpu", data={"num_clips": 4, "val_clips": 1}))
    with _pipeline_on(pipe, torch.device("cuda")):
        assert pipe.vae.device.type == "cuda"
        gpu = prepare_data(gcfg, pipe, WanAdapter())["train"]
    assert pipe.vae.device.type == "cpu"
    for i in range(4):
        for a, b in zip(cpu[(i, 2)], gpu[(i, 2)]):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_a_process_waits_on_disk_for_the_others_shards(toy_pipe, tmp_path):
    """``wait`` returns only once every shard is made, whoever makes it (here a thread standing in for
    process 1, which starts late)."""
    import threading
    import time

    clips = toy_source(3, seed=4, size=(64, 64), num_frames=5)
    store, make, encode = _store(toy_pipe, clips, tmp_path / "s", 2)
    store.make(make, encode, {}, rank=0, processes=2)

    def late():
        time.sleep(0.5)
        store.make(make, encode, {}, rank=1, processes=2)

    other = threading.Thread(target=late)
    other.start()
    assert not store.shard_done(1)
    store.wait(poll_seconds=0.05)
    assert store.shard_done(1)
    other.join()
