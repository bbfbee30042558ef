"""TrRa: training-time realignment — distil a student towards the fused reference/aligned distribution."""

from thinkctl.trra.calibrate import CalibrationError, CalibrationResult, LengthPoint, calibrate_lambda
from thinkctl.trra.realign import RealignConfig, run_realign
from thinkctl.trra.trainer import TrRaConfig, TrRaTrainer, train_trra

__all__ = ["CalibrationError", "CalibrationResult", "LengthPoint", "RealignConfig", "TrRaConfig", "TrRaTrainer",
           "calibrate_lambda", "run_realign", "train_trra"]
