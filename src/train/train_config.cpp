#include "moe/train/train_config.h"

#include "moe/core/threading.h"

namespace moe {

const FieldTable<TrainConfig>& train_config_fields() {
  static const FieldTable<TrainConfig> t = [] {
    using T = TrainConfig;
    const auto positive = rule::at_least(1);
    const auto nonneg = rule::at_least(0);
    const auto above0 = rule::above(0.f);
    const auto nonneg_f = rule::at_least(0.f);
    const auto unit = rule::half_open(0.f, 1.f);
    FieldTable<T> t;
    t.section("`train`");
    t.add("batch_size", &T::batch_size, "sequences per micro-batch", positive);
    t.add("seq_len", &T::seq_len, "tokens per sequence (at most model.max_seq_len)", positive);
    t.add("grad_accum", &T::grad_accum, "micro-batches per optimizer step", positive);
    t.add("sample_by_step", &T::sample_by_step,
          "draw a step's grad_accum × batch_size sequences from one stream, numbered across its "
          "micro-batches, so any grad_accum × ranks split of the step sees the same sequences "
          "(false: one stream per micro-batch; the same when grad_accum = 1)");
    t.add("steps", &T::steps, "optimizer steps", positive);
    t.add("lr", &T::lr,
          "peak learning rate: linear warmup to lr, cosine decay to min_lr at `steps`", above0);
    t.add("min_lr", &T::min_lr, "learning rate at the end of the cosine decay",
          [](float v, const T& t) -> std::optional<std::string> {
            if (v >= 0 && v <= t.lr) return std::nullopt;
            return fmt::format("0 <= min_lr <= lr = {}", t.lr);
          });
    t.add("warmup_steps", &T::warmup_steps, "steps of linear warmup", nonneg);
    t.add("weight_decay", &T::weight_decay, "AdamW decoupled decay, on matrices only", nonneg_f);
    t.add("beta1", &T::beta1, "AdamW β1", unit);
    t.add("beta2", &T::beta2, "AdamW β2", unit);
    t.add("eps", &T::eps, "AdamW ε", above0);
    t.add("grad_clip", &T::grad_clip, "global-norm clipping (0 = off)", nonneg_f);
    t.add("decay_embeddings", &T::decay_embeddings,
          "also decay the embedding (norm weights never decay)");
    t.add("eval_every", &T::eval_every, "validation every N steps (0 = only at the end)", nonneg);
    t.add("eval_batches", &T::eval_batches,
          "validation batches per evaluation (evenly spaced windows)", positive);
    t.add("log_every", &T::log_every, "metrics line every N steps", positive);
    t.add("checkpoint_every", &T::checkpoint_every,
          "write `last.safetensors` every N steps (0 = only at the end / on Ctrl-C)", nonneg);
    t.add("seed", &T::seed, "initialisation and data order (counter-based RNG)");
    t.add("threads", &T::threads, "OpenMP threads (0 = OpenMP's default / `OMP_NUM_THREADS`)",
          rule::between(0, kMaxThreads));
    t.add("time_limit_s", &T::time_limit_s,
          "stop with a checkpoint after this much training time (0 = off)", nonneg_f);
    t.add("out_dir", &T::out_dir, "run directory");
    t.add("freeze", &T::freeze,
          "parameter-name patterns (fnmatch) the optimizer leaves alone, e.g. `[\"*.experts.*\"]`");
    t.add("sparse_lr", &T::sparse_lr,
          "constant learning rate of row-sparse tables (PEER's u, v); 0 = the scheduled rate",
          nonneg_f);
    t.add("precision", &T::precision,
          "`fp32` or `bf16`: the operands of attention's projections, QKᵀ and P·V and of the FFN "
          "products (bf16: f32 accumulation, f32 masters; README, bf16 training)");
    return t;
  }();
  return t;
}

}  // namespace moe
