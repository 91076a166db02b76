#!/usr/bin/python3
"""Same bits: fixed tiny training runs whose every logged number and final weights must equal,
bit for bit, those recorded from main before the restructure (issue 15) began.

The restructure moves code (the MoE layer into router/dispatch/experts/exchange, PEER into named
passes, config declarations, observers) without changing what is computed. Any reordering of a
floating-point sum, a changed RNG key or a different GEMM choice shows up here as a differing
loss. The cases cover every router kind, capacity and dropless, shared experts, expert choice,
fine-grained and many-expert layers, expert dropout, PEER with each query norm and its optimizer
inside the backward, dense SwiGLU and GELU, gradient accumulation, 1 and 2 threads, and 2 MPI
ranks in data- and expert-parallel mode.

What is compared exactly: the per-step training loss, grad_norm and aux_loss (JSON doubles, which
round-trip), the final validation loss, and a SHA-256 of every tensor's bytes in the final
checkpoint (weights and AdamW moments), so a change that only moves weights is caught as well.

The recorded file, tests/fixtures/same_bits.json, was written by
    /usr/bin/python3 tests/python/test_same_bits.py --record build
at commit bbc9d83 (main before the restructure). Re-record only for a change that is meant to
change results, and say so in its commit message. One entry was re-recorded since: the old
checkpoint's "generate" text, when `moe generate` moved to the inference engine and llama.cpp's
sampler chain (issue 17: top-k 40 and min-p 0.05 by default, a new draw, and no sliding window, so
it stops when the checkpoint's 16-position context is full); its eval and resumed losses, and
every training case, are still bbc9d83's.

Run by ctest with MOE_BIN and MOE_MPIRUN (the mpirun CMake found)."""
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import safetensors_np  # noqa: E402

MOE = os.environ.get("MOE_BIN", "build/moe")
MPIRUN = os.environ.get("MOE_MPIRUN", "")
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                       "same_bits.json")
MPI_FLAGS = ["-np", "2", "--oversubscribe", "--allow-run-as-root", "-x", "OMP_NUM_THREADS=1"]
STEPS = 16


def write_data(d):
    random.seed(7)
    words = ("the jury said that city election was conducted in a manner of praise and "
             "the fulton county grand jury investigation produced no evidence").split()
    for split, n in [("train", 6000), ("val", 600), ("test", 600)]:
        with open(os.path.join(d, split + ".txt"), "w") as f:
            f.write(" ".join(random.choice(words) for _ in range(n)))


MOE4 = {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16}


def moe(**kw):
    f = dict(MOE4)
    f.update(kw)
    return f


PEER = {"kind": "peer", "num_experts": 256, "heads": 2, "top_k": 4, "d_key": 16}

# name -> (ffn, ffn_overrides, model extra, train extra, threads, env, ranks, moe train flags)
CASES = {
    "dense_swiglu_t1": dict(ffn={"d_ff": 64}, threads=1),
    "dense_gelu_t2": dict(ffn={"d_ff": 64, "activation": "gelu"}, threads=2),
    "dense_gqa_qknorm_untied_t2": dict(ffn={"d_ff": 64}, threads=2,
                                       model={"n_heads": 4, "n_kv_heads": 2, "qk_norm": True,
                                              "tie_embeddings": False}),
    "moe_topk_t1": dict(ffn=moe(), threads=1),
    "moe_topk_t2": dict(ffn=moe(), threads=2),
    "moe_topk_gelu_unnorm_t2": dict(ffn=moe(activation="gelu", router={"normalize": False}),
                                    threads=2),
    "moe_switch_capacity_t2": dict(ffn=moe(top_k=1, capacity_factor=1.25,
                                           eval_capacity_factor=2.0, aux_loss_coef=0.01,
                                           z_loss_coef=0.001,
                                           router={"normalize": False, "jitter": 0.01}),
                                   threads=2),
    "moe_gshard_t2": dict(ffn=moe(capacity_factor=2.0, eval_capacity_factor=2.0,
                                  router={"kind": "gshard"}), threads=2),
    "moe_noisy_t2": dict(ffn=moe(router={"kind": "noisy_topk"}), threads=2),
    "moe_sigmoid_bias_shared_t2": dict(
        ffn=moe(shared_experts=1, aux_loss_coef=0.0001,
                router={"score": "sigmoid", "bias_balance": True, "bias_rate": 0.001}),
        overrides={"0": {"kind": "dense"}}, threads=2),
    "moe_expert_choice_t1": dict(ffn={"kind": "moe", "d_ff": 64, "granularity": 2,
                                      "expansion": 4, "router": {"kind": "expert_choice"}},
                                 threads=1),
    "moe_expert_choice_t2": dict(ffn={"kind": "moe", "d_ff": 64, "granularity": 2,
                                      "expansion": 4, "router": {"kind": "expert_choice"}},
                                 threads=2),
    "moe_finegrained_g4_t2": dict(ffn={"kind": "moe", "d_ff": 64, "granularity": 4,
                                       "expansion": 4, "k_base": 1}, threads=2),
    "moe_many_experts_t2": dict(ffn=moe(num_experts=512, top_k=4, d_expert=8,
                                        capacity_factor=1.5), threads=2),
    "moe_dropout_accum_t2": dict(ffn=moe(expert_dropout=0.1), train={"grad_accum": 2},
                                 threads=2),
    "moe_blas_gemm_t2": dict(ffn=moe(expert_gemm="blas"), threads=2),
    # H·C = 133,120 > 2^17: by default (auto) OpenBLAS runs these experts; forced, the panel GEMM.
    # (Recorded at bbc9d83 with MOE_PANEL_GEMM=0 / 1, which model.ffn.expert_gemm replaced.)
    "moe_panel_gemm_big_t2": dict(ffn=moe(d_expert=1040, expert_gemm="panel"),
                                  model={"d_model": 128}, threads=2),
    "moe_auto_gemm_big_t2": dict(ffn=moe(d_expert=1040), model={"d_model": 128}, threads=2),
    "peer_batchnorm_t1": dict(ffn={"d_ff": 64}, overrides={"1": dict(PEER, query_norm="batchnorm")},
                              threads=1),
    "peer_batchnorm_t2": dict(ffn={"d_ff": 64}, overrides={"1": dict(PEER, query_norm="batchnorm")},
                              threads=2),
    "peer_layernorm_inbackward_t2": dict(
        ffn={"d_ff": 64}, overrides={"1": dict(PEER, query_norm="layernorm", activation="relu")},
        train={"grad_clip": 0, "sparse_lr": 0.01}, threads=2),
    "peer_none_accum_t2": dict(ffn={"d_ff": 64}, overrides={"1": dict(PEER, query_norm="none")},
                               train={"grad_accum": 2}, threads=2),
    "mpi_dp_moe_capacity": dict(ffn=moe(capacity_factor=1.0, aux_loss_coef=0.01,
                                        z_loss_coef=0.001), ranks=2),
    "mpi_dp_peer": dict(ffn={"d_ff": 64}, overrides={"1": dict(PEER, query_norm="batchnorm")},
                        ranks=2),
    "mpi_ep_moe_topk": dict(ffn=moe(), ranks=2, flags=["--expert-parallel", "2"]),
    "mpi_ep_expert_choice": dict(ffn={"kind": "moe", "d_ff": 64, "granularity": 2,
                                      "expansion": 4, "router": {"kind": "expert_choice"}},
                                 ranks=2, flags=["--expert-parallel", "2"]),
}


def config(d, out, case):
    model = {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 16,
             "ffn": case.get("ffn", {})}
    model.update(case.get("model", {}))
    if "overrides" in case:
        model["ffn_overrides"] = case["overrides"]
    train = {"batch_size": 4, "seq_len": 16, "steps": STEPS, "lr": 0.01, "warmup_steps": 2,
             "log_every": 1, "eval_every": 0, "eval_batches": 4, "checkpoint_every": 0,
             "threads": case.get("threads", 1), "out_dir": out}
    train.update(case.get("train", {}))
    return {"model": model, "data": {"dir": d}, "train": train}


def run_case(d, name, case):
    """Trains one case; returns the record compared against the fixture."""
    out = os.path.join(d, name)
    path = os.path.join(d, name + ".json")
    with open(path, "w") as f:
        json.dump(config(d, out, case), f)
    cmd = [MOE, "train", "--config", path, "--quiet"] + case.get("flags", [])
    extra_env = case.get("env", {})
    if case.get("ranks", 1) > 1:
        if not MPIRUN:
            raise RuntimeError("mpirun not found at configure time (scripts/setup.sh installs "
                               "openmpi-bin and libopenmpi-dev)")
        cmd = [MPIRUN] + MPI_FLAGS + [a for k in extra_env for a in ("-x", k)] + cmd
    env = dict(os.environ, **extra_env)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: moe train failed ({r.returncode}):\n{r.stderr}")
    rec = {"loss": [], "grad_norm": [], "aux_loss": [], "val_loss": []}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            for k in rec:
                if k in j:
                    rec[k].append(j[k])
    tensors, _ = safetensors_np.load(os.path.join(out, "final.safetensors"))
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].tobytes())
    rec["tensors_sha256"] = h.hexdigest()
    return rec


class SameBits(unittest.TestCase):
    def test_every_case_matches_the_recording(self):
        with open(FIXTURE) as f:
            want = json.load(f)
        del want["__old_checkpoint__"]
        self.assertEqual(sorted(want), sorted(CASES), "cases and recording disagree")
        with tempfile.TemporaryDirectory() as d:
            write_data(d)
            for name, case in CASES.items():
                with self.subTest(case=name):
                    got = run_case(d, name, case)
                    self.assertEqual(len(got["loss"]), STEPS)
                    for k in ("loss", "grad_norm", "aux_loss", "val_loss"):
                        for i, (a, b) in enumerate(zip(got[k], want[name][k])):
                            # Exact: a double parsed from JSON round-trips to the same bits.
                            self.assertEqual(a, b, f"{name}: {k}[{i}] is {a!r}, recorded {b!r}")
                        self.assertEqual(len(got[k]), len(want[name][k]), f"{name}: {k}")
                    self.assertEqual(got["tensors_sha256"], want[name]["tensors_sha256"],
                                     f"{name}: final weights or moments differ")


# A checkpoint written by main before the restructure: it must still load, evaluate, sample and
# resume to the same bits (the JSON schema and tensor names stay as they are).
OLD_CHECKPOINT = os.path.join(os.path.dirname(FIXTURE), "checkpoint_main_bbc9d83.safetensors")
CKPT_CASE = dict(ffn=moe(top_k=1, capacity_factor=1.25, eval_capacity_factor=2.0,
                         router={"normalize": False}),
                 overrides={"1": dict(PEER, num_experts=64, d_key=8, query_norm="batchnorm")},
                 model={"d_model": 16})


def use_checkpoint(d, ckpt):
    """eval --json, generate and a resume of 6 more steps from `ckpt`: what is compared."""
    rec = {}
    r = subprocess.run([MOE, "eval", "--checkpoint", ckpt, "--data-dir", d, "--split", "val",
                        "--threads", "2", "--json"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"moe eval failed:\n{r.stderr}")
    j = json.loads(r.stdout)
    rec["eval"] = {k: j[k] for k in ("loss", "bpb", "tokens", "bytes")}
    r = subprocess.run([MOE, "generate", "--checkpoint", ckpt, "--prompt", "the jury",
                        "--tokens", "40", "--temperature", "0.8", "--top-p", "0.95", "--seed", "3"],
                       capture_output=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if r.returncode != 0:
        raise RuntimeError(f"moe generate failed:\n{r.stderr}")
    rec["generate"] = r.stdout.decode("latin-1")  # byte tokens: not always whole UTF-8
    out = os.path.join(d, "resumed")
    cfg = config(d, out, dict(CKPT_CASE, threads=2))
    cfg["train"]["steps"] = STEPS + 6
    path = os.path.join(d, "resume.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([MOE, "train", "--config", path, "--quiet", "--resume", ckpt],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"moe train --resume failed:\n{r.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rec["resumed_loss"] = [json.loads(l)["loss"] for l in f if '"loss"' in l]
    return rec


class OldCheckpoint(unittest.TestCase):
    def test_checkpoint_from_main_before_the_restructure(self):
        with open(FIXTURE) as f:
            want = json.load(f)["__old_checkpoint__"]
        with tempfile.TemporaryDirectory() as d:
            write_data(d)
            got = use_checkpoint(d, OLD_CHECKPOINT)
        self.assertEqual(got["eval"], want["eval"])
        self.assertEqual(got["generate"], want["generate"])
        self.assertEqual(len(got["resumed_loss"]), 6)
        self.assertEqual(got["resumed_loss"], want["resumed_loss"])


def record():
    out = {}
    with tempfile.TemporaryDirectory() as d:
        write_data(d)
        for name, case in CASES.items():
            out[name] = run_case(d, name, case)
            print(name, out[name]["loss"][-1], flush=True)
        run_case(d, "ckpt", dict(CKPT_CASE, threads=2))
        with open(os.path.join(d, "ckpt", "final.safetensors"), "rb") as f:
            blob = f.read()
        with open(OLD_CHECKPOINT, "wb") as f:
            f.write(blob)
        out["__old_checkpoint__"] = use_checkpoint(d, OLD_CHECKPOINT)
    tmp = FIXTURE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    os.replace(tmp, FIXTURE)


if __name__ == "__main__":
    if "--record" in sys.argv:
        record()
    else:
        unittest.main(argv=[sys.argv[0]], verbosity=2)
