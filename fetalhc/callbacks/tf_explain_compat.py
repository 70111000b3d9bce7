"""Callbacks named and shaped like tf-explain's, for regression CNNs on Keras 3.

A tf-explain user switches by changing the import::

    # from tf_explain.callbacks.grad_cam import GradCAMCallback
    from fetalhc.callbacks import GradCAMCallback

    GradCAMCallback(validation_data=(x_val, y_val), layer_name="conv5", output_dir="logs/gc")

The argument names tf-explain uses are accepted where they make sense (``validation_data``,
``layer_name``, ``output_dir``, ``n_steps``, ``num_samples``, ``noise``, ``patch_size``).
``class_index`` has no meaning for a single regression output: it is accepted as ``None`` or
``0`` (what tf-explain users pass for a one-unit output) and refused otherwise. Unlike
tf-explain, the maps are signed regression attributions of the predicted HC in mm, and the
callbacks also log explanation scores (see :class:`SaliencyCallback`).
"""

from __future__ import annotations

from pathlib import Path

from fetalhc.callbacks.saliency import SaliencyCallback


def _check_class_index(class_index) -> None:
    if class_index not in (None, 0):
        raise ValueError(
            f"class_index={class_index!r}: a fetalhc model has one regression output (HC); "
            "pass class_index=None (or 0) — the maps explain the predicted HC"
        )


class _SingleMethodCallback(SaliencyCallback):
    method = ""

    def __init__(self, validation_data, class_index=None, output_dir=None, *,
                 method_options=None, **kwargs):
        _check_class_index(class_index)
        output_dir = output_dir if output_dir is not None else Path("logs") / self.method
        super().__init__(
            validation_data, methods=[self.method], output_dir=output_dir,
            method_options={self.method: dict(method_options or {})}, **kwargs,
        )


class VanillaGradientsCallback(_SingleMethodCallback):
    """Gradient of the predicted HC (mm) with respect to the input."""

    method = "gradient"


class GradientsInputsCallback(_SingleMethodCallback):
    """Input x Gradient of the predicted HC (mm)."""

    method = "input_x_gradient"


class GradCAMCallback(_SingleMethodCallback):
    """Signed Grad-CAM of the predicted HC at ``layer_name`` (default: the backbone's)."""

    method = "gradcam"

    def __init__(self, validation_data, class_index=None, layer_name=None, output_dir=None,
                 relu=False, **kwargs):
        super().__init__(validation_data, class_index, output_dir,
                         method_options={"layer_name": layer_name, "relu": relu}, **kwargs)


class IntegratedGradientsCallback(_SingleMethodCallback):
    """Integrated Gradients (with the ``(x - baseline)`` factor tf-explain omits)."""

    method = "integrated_gradients"

    def __init__(self, validation_data, class_index=None, n_steps=None, output_dir=None,
                 **kwargs):
        options = {} if n_steps is None else {"steps": int(n_steps)}
        super().__init__(validation_data, class_index, output_dir, method_options=options,
                         **kwargs)


class SmoothGradCallback(_SingleMethodCallback):
    """SmoothGrad of the predicted HC; ``noise`` is relative to the input's value range."""

    method = "smoothgrad"

    def __init__(self, validation_data, class_index=None, num_samples=None, noise=None,
                 output_dir=None, **kwargs):
        options = {}
        if num_samples is not None:
            options["n"] = int(num_samples)
        if noise is not None:
            options["noise_level"] = float(noise)
        super().__init__(validation_data, class_index, output_dir, method_options=options,
                         **kwargs)


class OcclusionSensitivityCallback(_SingleMethodCallback):
    """Occlusion: change of the predicted HC (mm) when a ``patch_size`` patch is hidden."""

    method = "occlusion"

    def __init__(self, validation_data, class_index=None, patch_size=None, output_dir=None,
                 stride=None, **kwargs):
        options = {}
        if patch_size is not None:
            options["patch"] = int(patch_size)
            options["stride"] = int(stride if stride is not None else max(1, patch_size // 2))
        elif stride is not None:
            options["stride"] = int(stride)
        super().__init__(validation_data, class_index, output_dir, method_options=options,
                         **kwargs)
