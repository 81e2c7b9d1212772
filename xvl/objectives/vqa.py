"""VQA as a pre-training task: answer classification on the fusion encoder's [CLS] for the VQA
batches mixed into a streamed run (``data.sources`` entries with ``task: vqa``).

The question tokens attend to the image's patch tokens in the fusion encoder and
``model.answer_head`` scores the answer vocabulary; the loss is the VQA soft-score BCE of
:func:`xvl.train.finetune_vqa.vqa_loss` (summed over answers, averaged over the batch), the same
as ``xvl finetune vqa`` uses. VQA batches carry their question under ``vqa_*`` keys so the
caption objectives (ITC, ITM, conditional MLM, which read ``input_ids``) never treat a question
as a caption; they skip these batches, and this objective skips every other batch.

Outputs: ``vqa_loss``, ``vqa_acc`` (the argmax answer's soft score, averaged: VQA accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES


@OBJECTIVES.register("vqa")
class VQAObjective(Objective):
    name = "vqa"
    requires = ("image", "vqa_input_ids", "vqa_targets")

    @dataclass
    class Args:
        pass

    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        from xvl.train.finetune_vqa import vqa_loss

        model = self.xvl_model
        if model.answer_head is None:
            raise ValueError("the vqa objective needs an answer vocabulary: give the vqa source an answers file")
        mask = batch["vqa_attention_mask"]
        text = model.text(batch["vqa_input_ids"], mask, lang=batch.get("vqa_lang"))["text_tokens"]
        fused = model.fuse(text, mask, outputs["image_tokens"], context_type="image")
        logits = model.answer_head(fused[:, 0])
        targets = batch["vqa_targets"]
        with torch.no_grad():
            acc = targets.gather(1, logits.argmax(dim=1, keepdim=True)).clamp(max=1).mean()
        return {"vqa_loss": vqa_loss(logits, targets), "vqa_acc": acc}
