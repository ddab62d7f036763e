"""ESMM (Ma et al. 2018): CTR and CVR towers on a shared representation, pCTCVR = pCTR x pCVR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import BackboneFactory
from mdrec.models.output import ModelOutput
from mdrec.nn.mlp import MLP


def product_logit(a: Tensor, b: Tensor) -> Tensor:
    """The logit of sigmoid(a) * sigmoid(b), computed in log space (stable for large |a|, |b|).

    Example:
        >>> a, b = torch.tensor([0.3]), torch.tensor([-1.2])
        >>> torch.allclose(torch.sigmoid(product_logit(a, b)), torch.sigmoid(a) * torch.sigmoid(b))
        True
    """
    log_p = F.logsigmoid(a) + F.logsigmoid(b)  # log(pCTR * pCVR) < 0
    return log_p - torch.log(-torch.expm1(log_p))  # log p - log(1 - p)


class ESMM(nn.Module):
    """Entire-space multi-task model over a backbone's representation ``h``.

    Two towers read ``h``: one predicts the click, one the conversion after a click (pCVR). pCVR is never
    supervised directly: the network outputs ``[logit pCTR, logit pCTCVR]`` with pCTCVR = pCTR * pCVR, and the
    BCE of the second column against the impression-level conversion label (click AND conversion) trains it on
    all impressions (docs/methods.md, ESMM). Evaluation then reports CTR-AUC and CTCVR-AUC.

    Args:
        schema: the data's schema; it needs two labels, click then the impression-level conversion.
        backbone: the backbone's factory (the ``backbone`` config node); its ``h`` is the shared representation.
        tower_sizes: hidden widths of each tower.
        dropout: dropout in the towers.

    Example:
        >>> net = ESMM(ctcvr_schema, DNNBackbone, tower_sizes=[64])
        >>> net(ctcvr_batch).logits.shape
        torch.Size([8, 2])
    """

    def __init__(
        self, schema: Schema, backbone: BackboneFactory, tower_sizes: Sequence[int] = (64,), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if len(schema.labels) < 2:
            raise ValueError(
                f"ESMM needs a click and a conversion label; data set {schema.dataset_id!r} has only "
                f"{list(schema.labels)}"
            )
        self.backbone = backbone(schema)
        width = self.backbone.hidden_size

        def tower() -> nn.Module:  # h [B, H] -> logit [B, 1]
            return nn.Sequential(MLP(width, list(tower_sizes), dropout), nn.Linear(tower_sizes[-1], 1))

        self.ctr_tower, self.cvr_tower = tower(), tower()
        self.num_tasks = 2

    def forward(self, batch: Batch) -> ModelOutput:
        shared = self.backbone(batch)
        ctr = self.ctr_tower(shared.h)  # [B, 1]
        cvr = self.cvr_tower(shared.h)  # [B, 1]
        return ModelOutput(
            logits=torch.cat([ctr, product_logit(ctr, cvr)], dim=1), aux_loss=shared.aux_loss, h=shared.h
        )
