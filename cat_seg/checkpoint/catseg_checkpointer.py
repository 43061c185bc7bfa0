"""detectron2 checkpointer for CAT-Seg models."""
from detectron2.checkpoint import DetectionCheckpointer


class CATSegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` used by train_net.py, the demo and the Python API."""
