"""Single-input speed of the Captum drop-ins (32 digits, the digits CNN, 2 threads, medians of 7 runs in ms) of
the fastattr source tree given (``python benchmarks/dropin_single_input.py <tree>/python``): run it for two
trees in turn (e.g. two git worktrees, each with the built ``_C`` extension linked in) to compare them."""
import sys, time, statistics, json
src = sys.argv[1]
sys.path.insert(0, src)
sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower() and 'scikit_build' not in repr(f).lower() and 'redirect' not in repr(f).lower()]
import torch
torch.set_num_threads(2)
from fastattr.integrations import captum as fc
from fastattr.zoo import load_digits_cnn, load_digits
assert fc.__file__.startswith(src), fc.__file__
net = load_digits_cnn(); x, _ = load_digits("test", 32); t = net(x).argmax(1)
cases = {
    "IntegratedGradients": lambda: fc.IntegratedGradients(net).attribute(x, target=t, n_steps=50),
    "Saliency": lambda: fc.Saliency(net).attribute(x, target=t),
    "Occlusion": lambda: fc.Occlusion(net).attribute(x, target=t, sliding_window_shapes=(1, 2, 2)),
    "FeatureAblation": lambda: fc.FeatureAblation(net).attribute(x, target=t),
    "NoiseTunnel(Saliency)": lambda: fc.NoiseTunnel(fc.Saliency(net)).attribute(x, target=t, nt_samples=10),
}
out = {}
for name, fn in cases.items():
    fn()
    ts = []
    for _ in range(7):
        s = time.perf_counter(); fn(); ts.append(time.perf_counter() - s)
    out[name] = statistics.median(ts) * 1e3
print(json.dumps(out))
