// pybind11 bindings of fastattr._C. Every kernel takes raw addresses (tensor.data_ptr()) of
// contiguous buffers plus sizes and a dtype name; the GIL is released while it runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace py = pybind11;

namespace fastattr {
void sparsemax_forward(std::uintptr_t x, std::uintptr_t out, int64_t rows, int64_t cols,
                       const std::string& dtype, int n_threads);
void sparsemax_backward(std::uintptr_t p, std::uintptr_t g, std::uintptr_t out, int64_t rows,
                        int64_t cols, const std::string& dtype, int n_threads);
void path_interpolate(std::uintptr_t x, std::uintptr_t base, std::uintptr_t alphas, std::uintptr_t out,
                      int64_t steps, int64_t batch, int64_t d, bool shared_base, const std::string& dtype,
                      int n_threads);
void path_accumulate(std::uintptr_t acc, std::uintptr_t grads, std::uintptr_t weights, std::uintptr_t diff,
                     std::uintptr_t out, int64_t steps, int64_t batch, int64_t d, const std::string& dtype,
                     int n_threads);
void perturb_by_rank(std::uintptr_t x, std::uintptr_t base, std::uintptr_t rank, std::uintptr_t counts,
                     std::uintptr_t out, int64_t steps, int64_t batch, int64_t channels, int64_t features,
                     bool insert, const std::string& dtype, int n_threads);
void cd_bias_split(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t out, int64_t n_ref, int64_t k,
                   int64_t channels, int64_t positions, bool relu, const std::string& dtype, int n_threads);
int64_t stencil_solve(std::uintptr_t rhs, std::uintptr_t removed, std::uintptr_t out, int64_t groups,
                      int64_t n_rhs, int64_t height, int64_t width, bool from_image, double tol,
                      int64_t max_iter, const std::string& dtype, int n_threads);
int64_t simplex_qp(std::uintptr_t G, std::uintptr_t c, std::uintptr_t out, int64_t batch, int64_t k,
                   const std::string& dtype, int n_threads);
void bottleneck_forward(std::uintptr_t R, std::uintptr_t alpha, std::uintptr_t mu, std::uintptr_t sigma,
                        std::uintptr_t eps, std::uintptr_t Z, std::uintptr_t cap, int64_t batch, int64_t samples,
                        int64_t channels, int64_t height, int64_t width, double smooth_sigma,
                        const std::string& dtype, int n_threads);
void bottleneck_backward(std::uintptr_t R, std::uintptr_t alpha, std::uintptr_t mu, std::uintptr_t sigma,
                         std::uintptr_t eps, std::uintptr_t gZ, std::uintptr_t gcap, std::uintptr_t dR,
                         std::uintptr_t dalpha, int64_t batch, int64_t samples, int64_t channels, int64_t height,
                         int64_t width, double smooth_sigma, const std::string& dtype, int n_threads);
void greedy_gains(std::uintptr_t z1, std::uintptr_t columns, std::uintptr_t layers, std::uintptr_t dims,
                  int64_t n_layers, std::uintptr_t selected, std::uintptr_t candidates, std::uintptr_t bounds,
                  std::uintptr_t out,
                  int64_t batch, int64_t n, int64_t n_candidates, int64_t kind, const std::string& dtype,
                  int n_threads);
int64_t group_masks(std::uintptr_t logits, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t first,
                    int64_t batch, int64_t R, int64_t n, int64_t G, int64_t K, const std::string& dtype,
                    int n_threads);
int64_t group_gen(std::uintptr_t patches, std::uintptr_t proj_weight, std::uintptr_t proj_bias,
                  std::uintptr_t position, std::uintptr_t query_weight, std::uintptr_t key_weight,
                  std::uintptr_t logits, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t first,
                  int64_t batch, int64_t P, int64_t D, int64_t d, int64_t h, int64_t G, int64_t K,
                  const std::string& dtype, int n_threads);
int64_t distinct_slots(std::uintptr_t first, std::uintptr_t slot, std::uintptr_t rows, int64_t batch, int64_t G);
int64_t distinct_copies(std::uintptr_t x, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t unit_patch,
                        std::uintptr_t out, int64_t N, int64_t G, int64_t C, int64_t L, int64_t P,
                        const std::string& dtype, int n_threads);
int64_t group_select(std::uintptr_t z, std::uintptr_t slot, std::uintptr_t weight, std::uintptr_t bias,
                     std::uintptr_t query, std::uintptr_t p, std::uintptr_t y, std::uintptr_t logits, int64_t batch,
                     int64_t N, int64_t G, int64_t C, int64_t h, const std::string& dtype, int n_threads);
void max_pool2d(std::uintptr_t x, std::uintptr_t out, std::uintptr_t indices, int64_t planes, int64_t H, int64_t W,
                int64_t OH, int64_t OW, int64_t kH, int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW,
                int64_t dH, int64_t dW, const std::string& dtype, int n_threads);
void max_pool2d_backward(std::uintptr_t grad, std::uintptr_t indices, std::uintptr_t grad_x, int64_t planes,
                         int64_t H, int64_t W, int64_t OH, int64_t OW, const std::string& dtype, int n_threads);
void conv2d_input_grad(std::uintptr_t grad, std::uintptr_t weight, std::uintptr_t grad_x, int64_t N, int64_t Co,
                       int64_t Ci, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sH,
                       int64_t sW, int64_t pH, int64_t pW, int64_t dH, int64_t dW, const std::string& dtype,
                       int n_threads);
bool conv2d_input_grad_sparse(std::uintptr_t grad, std::uintptr_t weight, std::uintptr_t grad_x, int64_t N,
                              int64_t Co, int64_t Ci, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t KH,
                              int64_t KW, int64_t sH, int64_t sW, int64_t pH, int64_t pW, int64_t dH, int64_t dW,
                              const std::string& dtype, int n_threads);
int64_t deeplift_rescale(std::uintptr_t grad, std::uintptr_t x, std::uintptr_t y, std::uintptr_t xb,
                         std::uintptr_t yb, std::uintptr_t out, int64_t rows, int64_t per_row, int64_t base_rows,
                         double eps, bool relu, const std::string& dtype, int n_threads);
int64_t deeplift_maxpool(std::uintptr_t grad, std::uintptr_t y, std::uintptr_t yb, std::uintptr_t index,
                         std::uintptr_t index_b, std::uintptr_t x, std::uintptr_t xb, std::uintptr_t out,
                         int64_t planes, int64_t channels, int64_t base_rows, int64_t O, int64_t HW, double eps,
                         const std::string& dtype, int n_threads);
}  // namespace fastattr

static bool has_openmp() {
#ifdef FASTATTR_OPENMP
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastattr CPU kernels (raw-pointer pybind11 bindings; no libtorch linkage)";
  m.def("has_openmp", &has_openmp);
  m.def("sparsemax_forward", &fastattr::sparsemax_forward, py::arg("x"), py::arg("out"),
        py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("n_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "Row-wise sparsemax of a contiguous [rows, cols] buffer into out.");
  m.def("sparsemax_backward", &fastattr::sparsemax_backward, py::arg("p"), py::arg("g"),
        py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "Row-wise sparsemax backward: out = (g - mean_S g) * 1_S with S = {p > 0}.");
  m.def("path_interpolate", &fastattr::path_interpolate, py::arg("x"), py::arg("base"), py::arg("alphas"),
        py::arg("out"), py::arg("steps"), py::arg("batch"), py::arg("d"), py::arg("shared_base"),
        py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "out[s, b] = base[b] + alphas[s] * (x[b] - base[b]) for [steps, batch, d] buffers.");
  m.def("path_accumulate", &fastattr::path_accumulate, py::arg("acc"), py::arg("grads"), py::arg("weights"),
        py::arg("diff"), py::arg("out"), py::arg("steps"), py::arg("batch"), py::arg("d"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "out[b] = (acc[b] + sum_s w[s] * g[s, b]) * diff[b] (diff = 0 address: no multiply).");
  m.def("perturb_by_rank", &fastattr::perturb_by_rank, py::arg("x"), py::arg("base"), py::arg("rank"),
        py::arg("counts"), py::arg("out"), py::arg("steps"), py::arg("batch"), py::arg("channels"),
        py::arg("features"), py::arg("insert"), py::arg("dtype"), py::arg("n_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "out[k*B+b, c, i] = ((rank[b, i] < counts[k]) == insert) ? x[b, c, i] : base[b, c, i].");
  m.def("cd_bias_split", &fastattr::cd_bias_split, py::arg("y"), py::arg("bias"), py::arg("out"),
        py::arg("n_ref"), py::arg("k"), py::arg("channels"), py::arg("positions"), py::arg("relu"),
        py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "CD beta-only bias split of stacked [n_ref*(1+k), channels, positions] rows into out.");
  m.def("stencil_solve", &fastattr::stencil_solve, py::arg("rhs"), py::arg("removed"), py::arg("out"),
        py::arg("groups"), py::arg("n_rhs"), py::arg("height"), py::arg("width"), py::arg("from_image"),
        py::arg("tol"), py::arg("max_iter"), py::arg("dtype"), py::arg("n_threads"),
        py::call_guard<py::gil_scoped_release>(),
        "CG solve of the noisy-linear-imputation stencil system per (plane, rhs) (from_image: rhs is the "
        "image, out the imputed image); returns the number of solves that did not converge.");
  m.def("bottleneck_forward", &fastattr::bottleneck_forward, py::arg("R"), py::arg("alpha"), py::arg("mu"),
        py::arg("sigma"), py::arg("eps"), py::arg("Z"), py::arg("cap"), py::arg("batch"), py::arg("samples"),
        py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("smooth_sigma"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "IBA bottleneck: Z = lam R + (1 - lam)(sigma eps + mu) per noise draw and the capacity (KL), "
        "lam the smoothed sigmoid of alpha.");
  m.def("bottleneck_backward", &fastattr::bottleneck_backward, py::arg("R"), py::arg("alpha"), py::arg("mu"),
        py::arg("sigma"), py::arg("eps"), py::arg("gZ"), py::arg("gcap"), py::arg("dR"), py::arg("dalpha"),
        py::arg("batch"), py::arg("samples"), py::arg("channels"), py::arg("height"), py::arg("width"),
        py::arg("smooth_sigma"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "Gradients of the IBA bottleneck with respect to R and alpha.");
  m.def("simplex_qp", &fastattr::simplex_qp, py::arg("G"), py::arg("c"), py::arg("out"), py::arg("batch"),
        py::arg("k"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "Exact active-set solve of min w'Gw + c'w over the simplex per [k, k] block of G (c = 0 address: "
        "no c); returns the number of examples that hit the iteration cap.");
  m.def("group_masks", &fastattr::group_masks, py::arg("logits"), py::arg("masks"), py::arg("rows"),
        py::arg("first"), py::arg("batch"), py::arg("R"), py::arg("n"), py::arg("G"), py::arg("K"),
        py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "SOP's group selection per example: the G rows of [R, n] logits of largest sparsemax peak (then max, "
        "then index), each as the mask of its K largest entries, and the first equal group of each; returns "
        "the number of rows holding NaN or +-inf.");
  m.def("group_gen", &fastattr::group_gen, py::arg("patches"), py::arg("proj_weight"), py::arg("proj_bias"),
        py::arg("position"), py::arg("query_weight"), py::arg("key_weight"), py::arg("logits"), py::arg("masks"),
        py::arg("rows"), py::arg("first"), py::arg("batch"), py::arg("P"), py::arg("D"), py::arg("d"), py::arg("h"),
        py::arg("G"), py::arg("K"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "SOP's GroupGen per example: patch embeddings X Wp^T + bp + pos, per-head logits (e A_j) e^T with "
        "A_j = Wq_j^T Wk_j / sqrt(d) (proj_bias = 0 address: no bias), then group_masks' selection on them; "
        "returns the number of logit rows holding NaN or +-inf.");
  m.def("distinct_slots", &fastattr::distinct_slots, py::arg("first"), py::arg("slot"), py::arg("rows"),
        py::arg("batch"), py::arg("G"), py::call_guard<py::gil_scoped_release>(),
        "SOP's distinct groups (first[b, g] == g) numbered example-major: each group's slot and each copy's flat "
        "group; returns N, or minus the number of entries of first that point at no distinct group before them.");
  m.def("distinct_copies", &fastattr::distinct_copies, py::arg("x"), py::arg("masks"), py::arg("rows"),
        py::arg("unit_patch"), py::arg("out"), py::arg("N"), py::arg("G"), py::arg("C"), py::arg("L"), py::arg("P"),
        py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "SOP's masked copies x[b] * masks[rows[n]][unit_patch] of the distinct groups; returns the number of "
        "unit_patch entries outside [0, P).");
  m.def("max_pool2d", &fastattr::max_pool2d, py::arg("x"), py::arg("out"), py::arg("indices"), py::arg("planes"),
        py::arg("H"), py::arg("W"), py::arg("OH"), py::arg("OW"), py::arg("kH"), py::arg("kW"), py::arg("sH"),
        py::arg("sW"), py::arg("pH"), py::arg("pW"), py::arg("dH"), py::arg("dW"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "Max pooling of contiguous [planes, H, W] into [planes, OH, OW] with each maximum's flat index ih * W + iw "
        "(torch's max_pool2d_with_indices, NaN included).");
  m.def("max_pool2d_backward", &fastattr::max_pool2d_backward, py::arg("grad"), py::arg("indices"), py::arg("grad_x"),
        py::arg("planes"), py::arg("H"), py::arg("W"), py::arg("OH"), py::arg("OW"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "The input gradient of max_pool2d from its indices: each [H, W] plane zeroed, then grad[p, o] added at "
        "indices[p, o] in row-major order (torch's max_pool2d_with_indices_backward, bit for bit), an index outside "
        "its plane skipped.");
  m.def("conv2d_input_grad", &fastattr::conv2d_input_grad, py::arg("grad"), py::arg("weight"), py::arg("grad_x"),
        py::arg("N"), py::arg("Co"), py::arg("Ci"), py::arg("OH"), py::arg("OW"), py::arg("H"), py::arg("W"),
        py::arg("KH"), py::arg("KW"), py::arg("sH"), py::arg("sW"), py::arg("pH"), py::arg("pW"), py::arg("dH"),
        py::arg("dW"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "The input gradient [N, Ci, H, W] of a 2-D convolution (groups 1) from grad [N, Co, OH, OW] and weight "
        "[Co, Ci, KH, KW]: per example and input channel, the channel sums per tap, then each tap's rows added "
        "into a zeroed buffer that covers the padding.");
  m.def("conv2d_input_grad_sparse", &fastattr::conv2d_input_grad_sparse, py::arg("grad"), py::arg("weight"),
        py::arg("grad_x"), py::arg("N"), py::arg("Co"), py::arg("Ci"), py::arg("OH"), py::arg("OW"), py::arg("H"),
        py::arg("W"), py::arg("KH"), py::arg("KW"), py::arg("sH"), py::arg("sW"), py::arg("pH"), py::arg("pW"),
        py::arg("dH"), py::arg("dW"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "The input gradient of conv2d_input_grad from the nonzero entries of grad only: per example and output "
        "position, the weights of the channels whose gradient is nonzero summed in registers and added at each "
        "tap (work in proportion to the nonzeros). Returns false, writing nothing, where a weight is not finite "
        "(a skipped zero times it would be NaN).");
  m.def("deeplift_rescale", &fastattr::deeplift_rescale, py::arg("grad"), py::arg("x"), py::arg("y"), py::arg("xb"),
        py::arg("yb"), py::arg("out"), py::arg("rows"), py::arg("per_row"), py::arg("base_rows"), py::arg("eps"),
        py::arg("relu"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "DeepLift's rescale multiplier grad * (y - y') / (x - x') per element, row r paired with baseline row "
        "r % base_rows; where |x - x'| < eps a ReLU's own gradient (relu) or, returned as a count, the caller's.");
  m.def("deeplift_maxpool", &fastattr::deeplift_maxpool, py::arg("grad"), py::arg("y"), py::arg("yb"),
        py::arg("index"), py::arg("index_b"), py::arg("x"), py::arg("xb"), py::arg("out"), py::arg("planes"),
        py::arg("channels"), py::arg("base_rows"), py::arg("O"), py::arg("HW"), py::arg("eps"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "DeepLift's max-pool multiplier per plane (torch's scatter_add_ order), the pool's own gradient where "
        "|x - x'| < eps; returns -1 when an index lies outside its plane.");
  m.def("group_select", &fastattr::group_select, py::arg("z"), py::arg("slot"), py::arg("weight"), py::arg("bias"),
        py::arg("query"), py::arg("p"), py::arg("y"), py::arg("logits"), py::arg("batch"), py::arg("N"), py::arg("G"),
        py::arg("C"), py::arg("h"), py::arg("dtype"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "SOP's GroupSelect per example: partial logits W z + b and scores Q z of the rows slot[b] of z, the "
        "sparsemax of the scores over the groups per class, and the logits sum_g p y; returns the number of "
        "slots outside [0, N).");
  m.def("greedy_gains", &fastattr::greedy_gains, py::arg("z1"), py::arg("columns"), py::arg("layers"),
        py::arg("dims"), py::arg("n_layers"), py::arg("selected"), py::arg("candidates"), py::arg("bounds"),
        py::arg("out"),
        py::arg("batch"), py::arg("n"), py::arg("n_candidates"), py::arg("kind"), py::arg("dtype"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
        "Marginal gains of a batch of deep submodular functions for every candidate (or the listed ones), "
        "propagated as differences from the first-layer state (0 for selected candidates); with bounds "
        "(sorted, best first), lazily: chunks while a bound can still reach the best gain.");
}
