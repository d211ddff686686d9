"""Communication cost model: predicted step and end-to-end times of ring, zigzag and Hamilton attention.

Pure Python (no torch). Describe the interconnect (:class:`FullMesh`, :class:`Switch`, :class:`MultiNode`, or a
preset such as :data:`MI300X_MESH`), the attention call (:class:`Problem`) and the kernel rates
(:class:`ComputeRates`); :func:`predict` gives one algorithm's timeline, :func:`choose_algorithm` the fastest;
:func:`predict_layout` and :func:`choose_layout` do the same for head x sequence (Ulysses x ring) layouts.
"""

from .choose import Choice, choose_algorithm
from .hybrid import LayoutChoice, LayoutPrediction, choose_layout, predict_layout
from .interconnect import FullMesh, Interconnect, MultiNode, Switch
from .machines import INTERCONNECT_ENV, MACHINES, interconnect_for
from .predict import Prediction, StepTime, predict
from .presets import H100_NVSWITCH, H200_NVSWITCH, MI300X_MESH, h100_nodes
from .problem import KERNEL_RATES, ComputeRates, Problem

__all__ = [
    "H100_NVSWITCH",
    "H200_NVSWITCH",
    "INTERCONNECT_ENV",
    "KERNEL_RATES",
    "MACHINES",
    "MI300X_MESH",
    "Choice",
    "ComputeRates",
    "FullMesh",
    "Interconnect",
    "LayoutChoice",
    "LayoutPrediction",
    "MultiNode",
    "Prediction",
    "Problem",
    "StepTime",
    "Switch",
    "choose_algorithm",
    "choose_layout",
    "h100_nodes",
    "interconnect_for",
    "predict",
    "predict_layout",
]
