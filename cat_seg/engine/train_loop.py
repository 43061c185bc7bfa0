"""Training step with optional mixed precision on any device (detectron2's AMPTrainer is CUDA/fp16 only)."""
import time

import torch
from detectron2.engine import SimpleTrainer


class MixedPrecisionTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward runs under ``torch.autocast(device, dtype)``.

    bf16 needs no loss scaling; fp16 uses a ``GradScaler`` (gradients are unscaled before
    the optimizer step, so full-model gradient clipping sees true gradients).

    Args:
        precision: the autocast dtype (``torch.bfloat16`` / ``torch.float16``).
        device_type: the model's device type (``"cuda"``, ``"cpu"``), which autocast and the
            scaler work on.
    """

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype, device_type: str):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision
        self.device_type = device_type
        self.grad_scaler = (
            torch.amp.GradScaler(device_type) if precision == torch.float16 else None
        )

    def run_step(self):
        """``SimpleTrainer.run_step`` with the forward under autocast and, for fp16, the
        loss scaled: the same hooks (``after_backward``) and options
        (``zero_grad_before_forward``, ``async_write_metrics``) where detectron2 has them."""
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        zero_grad_first = getattr(self, "zero_grad_before_forward", False)
        if zero_grad_first:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not zero_grad_first:
            self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)  # hooks and clipping see true gradients
        else:
            losses.backward()
        if hasattr(self, "after_backward"):  # detectron2 versions with the hook
            self.after_backward()
        if getattr(self, "async_write_metrics", False):
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
