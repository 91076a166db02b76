#include "moe/train/routing_groups.h"

#include <cmath>

#include "moe/core/error.h"
#include "moe/ffn/feed_forward.h"
#include "moe/model/transformer.h"

namespace moe {

double entropy_bits(const std::vector<int64_t>& counts) {
  double total = 0;
  for (int64_t c : counts) total += double(c);
  if (total <= 0) return 0;
  double h = 0;
  for (int64_t c : counts)
    if (c > 0) h -= double(c) / total * std::log2(double(c) / total);
  return h;
}

double mutual_information_bits(const std::vector<int64_t>& counts, int rows, int cols) {
  MOE_CHECK(counts.size() == std::size_t(rows) * std::size_t(cols),
            "mutual_information_bits: {} counts for a {}×{} table", counts.size(), rows, cols);
  std::vector<double> r(rows, 0.0), c(cols, 0.0);
  double total = 0;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double v = double(counts[std::size_t(i) * cols + j]);
      r[i] += v;
      c[j] += v;
      total += v;
    }
  if (total <= 0) return 0;
  // Σ p_ij log2(p_ij / (p_i p_j)) = Σ (n_ij / n) log2(n_ij·n / (n_i·n_j)).
  double mi = 0;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double v = double(counts[std::size_t(i) * cols + j]);
      if (v > 0) mi += v / total * std::log2(v * total / (r[i] * c[j]));
    }
  return mi;
}

void GroupRoutingCounter::add(const Transformer& model, const std::vector<int64_t>& starts, int b,
                              int len) {
  const auto& ffns = model.ffns();
  if (layers_.empty()) layers_.resize(ffns.size());
  const int G = int(groups_.names.size());
  for (std::size_t l = 0; l < ffns.size(); ++l) {
    int k = 0;
    const std::vector<int32_t> ch = ffns[l]->last_choices(&k);
    if (k == 0) continue;
    MOE_CHECK(ch.size() == std::size_t(b) * len * k,
              "internal: layer {} reported {} choices for {} tokens × {}", l, ch.size(),
              int64_t(b) * len, k);
    Layer& L = layers_[l];
    L.per_token = k;
    for (int32_t e : ch) {
      if (e + 1 <= L.experts) continue;
      // A new highest expert id: widen every group's row (zeros for the new columns).
      std::vector<int64_t> wider(std::size_t(G) * (e + 1), 0);
      for (int g = 0; g < G; ++g)
        for (int j = 0; j < L.experts; ++j)
          wider[std::size_t(g) * (e + 1) + j] = L.counts[std::size_t(g) * L.experts + j];
      L.counts.swap(wider);
      L.experts = e + 1;
    }
    for (int i = 0; i < b; ++i)
      for (int t = 0; t < len; ++t) {
        const int g = groups_.of_token[std::size_t(starts[i] + t)];
        const int32_t* sel = ch.data() + (std::size_t(i) * len + t) * k;
        for (int j = 0; j < k; ++j)
          if (sel[j] >= 0) ++L.counts[std::size_t(g) * L.experts + sel[j]];
      }
  }
}

nlohmann::json GroupRoutingCounter::result() const {
  nlohmann::json all = nlohmann::json::array();
  const int G = int(groups_.names.size());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    if (L.per_token == 0) continue;
    std::vector<int64_t> by_group(G, 0), by_expert(L.experts, 0);
    int64_t pairs = 0;
    nlohmann::json rows = nlohmann::json::array();
    for (int g = 0; g < G; ++g) {
      std::vector<int64_t> row(L.counts.begin() + std::size_t(g) * L.experts,
                               L.counts.begin() + std::size_t(g + 1) * L.experts);
      for (int e = 0; e < L.experts; ++e) {
        by_group[g] += row[e];
        by_expert[e] += row[e];
        pairs += row[e];
      }
      rows.push_back(row);
    }
    const double bias =
        pairs > 0 ? double(G - 1) * double(L.experts - 1) / (2.0 * double(pairs) * std::log(2.0))
                  : 0.0;
    all.push_back({{"layer", l},
                   {"pairs", pairs},
                   {"per_token", L.per_token},
                   {"mi_bits", mutual_information_bits(L.counts, G, L.experts)},
                   {"h_group_bits", entropy_bits(by_group)},
                   {"h_expert_bits", entropy_bits(by_expert)},
                   {"bias_bits", bias},
                   {"groups", groups_.names},
                   {"counts", rows}});
  }
  return all.empty() ? nlohmann::json(nullptr) : all;
}

}  // namespace moe
