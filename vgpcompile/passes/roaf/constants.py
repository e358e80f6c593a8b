"""roaf's defaults (research/roaf.md §5; the paper's own values could not be read).

The nonlinear share is beta = c / L for a stack of L filtered blocks and beta = c / horizon
for a recurrent layer: with alpha = 1 - beta the end-to-end Jacobian's singular values then
stay within about [exp(-2c), 1] at any depth (the orthogonal path carries the signal, each
layer adds O(1/L)), while a fixed beta vanishes like (1 - beta)^L.
"""

DEFAULT_C = 1.0  # beta * depth; research/roaf.md measured gradient norms e^-1 at c = 1, e^-5 at c = 5
DEFAULT_HORIZON = 100  # steps a recurrent layer must remember when the horizon option is not given
DEFAULT_MAX_BUFFER_MB = 256.0  # per-block O above this total switches to one shared O (shared=None)
