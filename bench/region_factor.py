"""bench/region_factor.py: PeakVI's per-peak region factor in the autoencoders' likelihood, measured (issue 20).

    python bench/region_factor.py [bench/quality.py's arguments] [--region-init 2.0]

PeakVI (Ashuach et al. 2022) models a peak as open with probability sigmoid(decoder(z))_j * l_i * r_j: l_i a
per-cell factor, r_j in (0, 1) a learned per-peak ("region") factor that lets a peak stay closed in some cells of a
type without the code having to explain it. The suite's decoders already add a per-cell depth offset to the logits
and learn a per-peak bias (a multiplicative factor on each peak's odds); what they lack is r_j's cap in
probability space. This script adds it to every decoder's output layer, p_ij = sigmoid(logit_ij + depth_i) *
sigmoid(rho_j), rho_j learned from --region-init, and runs bench/quality.py with it: the same data, seeds,
scoring and table. The likelihood needs every peak's logit, so it runs with the full decoder (`--decoder full`,
which it passes on); compare against `bench/quality.py ... --decoder full` without it.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def add_region_factor(initial: float):
    """Give scatac.nn.PeakOutput a learned per-peak factor sigmoid(rho) (rho from `initial`) in probability space."""
    import torch
    import torch.nn.functional as F

    from scatac import nn as scatac_nn

    plain_init = scatac_nn.PeakOutput.__init__

    def __init__(self, *args, **kwargs):
        plain_init(self, *args, **kwargs)
        self.region_logit = torch.nn.Parameter(torch.full((self.out_features,), float(initial)))

    def nll(self, hidden, batch):
        if self.sampler is not None:
            raise RuntimeError("the region factor needs the full decoder: pass --decoder full")
        log_open = F.logsigmoid(self(hidden) + batch.depth) + F.logsigmoid(self.region_logit)
        # log(1 - p) from log p, stable where p is small (expm1) and kept finite where p nears 1
        log_closed = torch.log(-torch.expm1(log_open.clamp(max=-1e-6)))
        target = batch.target
        return -(target * log_open + (1 - target) * log_closed).sum() / len(batch.rows)

    scatac_nn.PeakOutput.__init__ = __init__
    scatac_nn.PeakOutput.nll = nll


def main(argv=None):
    import quality

    argv = list(sys.argv[1:] if argv is None else argv)
    initial = 2.0
    if "--region-init" in argv:
        at = argv.index("--region-init")
        initial = float(argv[at + 1])
        del argv[at:at + 2]
    add_region_factor(initial)
    return quality.main(argv + ["--decoder", "full"])


if __name__ == "__main__":
    main()
