"""Two optimisers stepped as one: dense layers with one rule, sparse embedding gradients with another."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch


class JointOptimizer(torch.optim.Optimizer):
    """``dense`` and ``sparse`` (e.g. Adam and ``torch.optim.SparseAdam``) stepped as one optimiser.

    What sees an optimiser (Lightning's automatic optimisation, gradient zeroing, checkpoints, learning-rate
    callbacks) sees one: ``param_groups`` are ``dense``'s groups then ``sparse``'s (the same dictionaries: changing
    a group's ``lr`` changes the optimiser that owns it), ``state`` is one dictionary both update, and ``state_dict``
    / ``load_state_dict`` round-trip both in the standard format. The two must hold disjoint parameters.

    Example:
        >>> emb, lin = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 1)
        >>> opt = JointOptimizer(torch.optim.Adam(lin.parameters()), torch.optim.SparseAdam(emb.parameters()))
        >>> lin(emb(torch.tensor([1, 2]))).sum().backward(); opt.step()
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        held = [{id(p) for g in o.param_groups for p in g["params"]} for o in (dense, sparse)]
        if held[0] & held[1]:
            raise ValueError(f"JointOptimizer: {len(held[0] & held[1])} parameter(s) are in both optimisers")
        super().__init__([p for o in (dense, sparse) for g in o.param_groups for p in g["params"]], {})
        self.dense, self.sparse = dense, sparse
        self._share(dense.param_groups + sparse.param_groups, defaultdict(dict, {**dense.state, **sparse.state}))

    def _share(self, groups: list[dict[str, Any]], state: defaultdict) -> None:
        """Make ``groups`` and ``state`` this optimiser's and its two parts' (``dense``'s groups first)."""
        n = len(self.dense.param_groups)
        self.param_groups, self.state = groups, state
        self.dense.param_groups, self.sparse.param_groups = groups[:n], groups[n:]
        self.dense.state = self.sparse.state = state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (forward and backward) once, then step both optimisers; return its loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.dense.step()
        self.sparse.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dictionaries and state: hand them to the two parts
        self._share(self.param_groups, self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "dense"):  # Optimizer.__init__ adds its one group before the parts exist
            raise NotImplementedError("JointOptimizer: add the group to its dense or its sparse optimiser")
        super().add_param_group(param_group)
