"""The ``QuantAwareTraining`` recipe stage: prepare fake-quant training layers, train, convert to integer layers.

It lives in ``train/`` (above the families) because it trains: ``quant/`` provides the training layers and their
conversion (``slimtorch.quant.qat``), this module runs the loop between them (``slimtorch.train.finetune``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from slimtorch._log import logger
from slimtorch.errors import DataError
from slimtorch.handlers import handler
from slimtorch.quant.config import QuantAwareTraining
from slimtorch.quant.qat import convert, prepare_qat
from slimtorch.train.finetune import Finetune, finetune, frozen_copy


@handler(QuantAwareTraining)
def quantize_aware(model: nn.Module, config: QuantAwareTraining, *, data: Any = None, example_inputs: Any = None,
                   select: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.quantize(model, QuantAwareTraining(...), data=...)`` and of the recipe stage
    ``quantize: {method: qat, ...}``: the model ends with the target format's integer layers, in eval mode.

    Raises:
        DataError: no labelled training data.
        ConfigError: the target cannot be trained for (``st.prepare_qat``'s refusals).
    """
    if data is None:
        raise DataError("QuantAwareTraining trains: pass data= (a labelled training loader or zoo data)")
    teacher = frozen_copy(model) if config.distill else None
    prepare_qat(model, config.format_config(), data=data, select=select)
    logger.info("quantization-aware training for %s: %d epoch(s)", config.target_method(), config.epochs)
    finetune(model, Finetune(epochs=config.epochs, lr=config.learning_rate(), distill=config.distill,
                             max_batches=config.max_batches), data=data, teacher=teacher, seed=seed)
    return convert(model)
