"""Training: TrainState, PyTorch-coupled SGD and the recipes' schedules, pure train/eval steps
compiled over a data mesh, the one training loop (`fit`) and its run state (one checkpoint
schema: `RunCheckpoints`), the method registry, the evaluation (post-hoc tau
chosen on validation) and the final report."""
# The mesh layout (`ltjax._mesh`) and the on-device pipeline's one epoch order
# (`ltjax.data.epoch_order`), re-exported for the trainers.
from ltjax._mesh import DATA_AXIS
from ltjax._mesh import batch_sharded
from ltjax._mesh import check_batch_divisible
from ltjax._mesh import data_mesh
from ltjax._mesh import put_replicated
from ltjax._mesh import replicated
from ltjax.data._device import epoch_order
from ltjax.train._build import CHECKPOINT_DIR
from ltjax.train._build import build_train_step
from ltjax.train._build import lr_schedule_of
from ltjax.train._build import precision_kwargs
from ltjax.train._build import restore_stage1
from ltjax.train._build import torchvision_weights
from ltjax.train._evaluate import NonFiniteMetrics
from ltjax.train._evaluate import SplitLogits
from ltjax.train._evaluate import evaluate
from ltjax.train._evaluate import select_tau
from ltjax.train._loop import TrainingDiverged
from ltjax.train._loop import fit
from ltjax.train._methods import DEFAULT_HPARAMS
from ltjax.train._methods import METHODS
from ltjax.train._methods import Grid
from ltjax.train._methods import HParam
from ltjax.train._methods import Integer
from ltjax.train._methods import LossInputs
from ltjax.train._methods import Method
from ltjax.train._methods import OneOf
from ltjax.train._methods import PostHoc
from ltjax.train._methods import Real
from ltjax.train._methods import declared_hparams
from ltjax.train._methods import get_method
from ltjax.train._methods import hparams
from ltjax.train._methods import joint_reuse
from ltjax.train._methods import register_method
from ltjax.train._methods import stage1_sources
from ltjax.train._optim import EPOCH_SCHEDULES
from ltjax.train._optim import cosine_epoch_lr
from ltjax.train._optim import freeze_backbone
from ltjax.train._optim import gala_epoch_lr
from ltjax.train._optim import ldam_epoch_lr
from ltjax.train._optim import lr_schedule
from ltjax.train._optim import per_epoch_schedule
from ltjax.train._optim import sgd_coupled
from ltjax.train._replicas import ReplicaProgram
from ltjax.train._replicas import make_replica_epoch_order
from ltjax.train._replicas import make_replica_train_step
from ltjax.train._replicas import replica_program
from ltjax.train._replicas import stack_on_mesh
from ltjax.train._replicas import stack_replicas
from ltjax.train._replicas import unstack_replica
from ltjax.train._report import evaluate_logits
from ltjax.train._report import format_report
from ltjax.train._report import plot_per_class
from ltjax.train._run_state import SCHEMA as CHECKPOINT_SCHEMA
from ltjax.train._run_state import ConfigError
from ltjax.train._run_state import RunCheckpoints
from ltjax.train._run_state import check_position as check_checkpoint_position
from ltjax.train._run_state import check_same_run
from ltjax.train._run_state import checkpoint_metadata
from ltjax.train._run_state import checkpoint_position
from ltjax.train._run_state import config_changes
from ltjax.train._run_state import latest_metadata as latest_checkpoint_metadata
from ltjax.train._run_state import refuse_existing_checkpoints
from ltjax.train._state import TrainState
from ltjax.train._state import create_train_state
from ltjax.train._state import init_variables
from ltjax.train._step import ClassStats
from ltjax.train._step import make_eval_logits
from ltjax.train._step import make_train_step
from ltjax.train._step import train_step_fn
from ltjax.train._watchdog import StepDeadline

__all__ = (
    "CHECKPOINT_DIR",
    "CHECKPOINT_SCHEMA",
    "DATA_AXIS",
    "DEFAULT_HPARAMS",
    "EPOCH_SCHEDULES",
    "METHODS",
    "ClassStats",
    "ConfigError",
    "Grid",
    "HParam",
    "Integer",
    "LossInputs",
    "Method",
    "NonFiniteMetrics",
    "OneOf",
    "PostHoc",
    "Real",
    "ReplicaProgram",
    "RunCheckpoints",
    "SplitLogits",
    "StepDeadline",
    "TrainState",
    "TrainingDiverged",
    "batch_sharded",
    "build_train_step",
    "check_batch_divisible",
    "check_checkpoint_position",
    "check_same_run",
    "checkpoint_metadata",
    "checkpoint_position",
    "config_changes",
    "cosine_epoch_lr",
    "create_train_state",
    "data_mesh",
    "declared_hparams",
    "epoch_order",
    "evaluate",
    "evaluate_logits",
    "fit",
    "format_report",
    "freeze_backbone",
    "gala_epoch_lr",
    "get_method",
    "hparams",
    "init_variables",
    "joint_reuse",
    "latest_checkpoint_metadata",
    "ldam_epoch_lr",
    "lr_schedule",
    "lr_schedule_of",
    "make_eval_logits",
    "make_replica_epoch_order",
    "make_replica_train_step",
    "make_train_step",
    "per_epoch_schedule",
    "plot_per_class",
    "precision_kwargs",
    "put_replicated",
    "refuse_existing_checkpoints",
    "register_method",
    "replica_program",
    "replicated",
    "restore_stage1",
    "select_tau",
    "sgd_coupled",
    "stack_on_mesh",
    "stack_replicas",
    "stage1_sources",
    "torchvision_weights",
    "train_step_fn",
    "unstack_replica",
)
