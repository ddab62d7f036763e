"""The model summary a run logs when fitting starts."""

from __future__ import annotations

import logging

from pytorch_lightning import callbacks
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from mdrec.console import table

log = logging.getLogger(__name__)


class ModelSummary(callbacks.ModelSummary):
    """Lightning's model summary as one table in the log, without the FLOPs column and total (Lightning counts
    FLOPs only from an ``example_input_array``, which a module on mdrec's batches does not declare: they would read
    0). The trainable, frozen and total parameter counts, then a row per module with parameters down to
    ``max_depth`` (name, type, train or eval mode, parameters; the metric states, without any, are left out).

    Args:
        max_depth: the nesting depth of the modules listed (0: no summary).
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
    ) -> None:
        kept = [(name, values) for name, values in summary_data if name in ("Name", "Type", "Mode", "Params")]
        kept.sort(key=lambda column: column[0] == "Params")  # the numbers last, right-aligned
        rows = [list(row) for row in zip(*(values for _, values in kept), strict=True) if row[-1].strip() != "0"]
        count = lambda n: get_human_readable_count(int(n)).strip()  # noqa: E731
        log.info(
            "model: %s trainable, %s frozen, %s parameters (%s MB)\n%s",
            count(trainable_parameters),
            count(total_parameters - trainable_parameters),
            count(total_parameters),
            get_formatted_model_size(model_size),
            table([name.lower() for name, _ in kept], rows, left=len(kept) - 1),
        )
