"""CUDA smoke test of the orthogonal pass (scratch, not part of the repo)."""
import time
import torch
from torch import nn
from vgpcompile import freeze, vgpcompile as vc
from vgpcompile.orthogonal import layers, orthogonality_error

dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name())
net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, groups=2), nn.Tanh(), nn.Flatten(),
                    nn.Linear(8 * 4 * 4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
x = torch.randn(32, 3, 6, 6, device=dev)
y = torch.randint(0, 10, (32,), device=dev)
for opts in [dict(keep="retraction"), dict(keep="rownorm"), dict(keep="parametrization"),
             dict(keep="parametrization", map="householder"), dict(keep="init"), dict(keep="retraction", init="project")]:
    m = vc(net, passes=["bsnn"], options={"orthogonal": {**opts, "thin_shell": True}}).to(dev)
    t = time.perf_counter()
    for opt in (torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.5), torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)):
        for _ in range(50):
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = m(x)
    err = max(orthogonality_error(layer) for layer in layers(m))
    f = freeze(m)
    diff = (f(x) - out).abs().max().item()
    dev_ok = all(p.device.type == "cuda" for p in f.parameters())
    print(f"{opts}: error after 100 steps {err:.1e}, freeze diff {diff:.1e}, cuda params {dev_ok}, loss {loss.item():.3f}, {time.perf_counter() - t:.1f}s")
