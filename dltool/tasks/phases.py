"""The two training phases of a model with a pretrained backbone.

A model one of whose layers is a KerasHub backbone (a subclass of
`keras_hub.models.Backbone`, told by class so this module does not import
KerasHub) is trained in two phases:

1. `training.freeze_backbone_epochs` epochs with the backbone frozen
   (`trainable = False`): only the new, randomly initialised head learns,
   so its first large gradients do not reach the pretrained weights. Keras
   runs the BatchNormalization layers of a frozen backbone in inference mode
   (its rule for `trainable = False`): they normalize with their pretrained
   moving statistics and do not update them.
2. The remaining epochs with every layer trainable, at
   `training.fine_tune_lr_factor` times the learning rate, except the
   backbone's BatchNormalization layers, which stay frozen and so in
   inference mode: unfrozen, they would replace the pretrained statistics
   with those of the small batches of a small data set (the advice of
   Keras' transfer-learning guide, keras.io/guides/transfer_learning).

Each phase compiles the model afresh from the compile config `model.py`
gave it (a new optimizer over that phase's trainable weights, the same loss
and metrics). Which phase an epoch is in follows from the epoch alone, so a
resumed run enters the phase of its checkpoint's epoch before the checkpoint
is restored (`dltool.engine.train`). A model without a backbone has one
phase, the whole run, as before.
"""

import contextlib
import dataclasses
import math
import warnings

from dltool._tf import keras


@dataclasses.dataclass(frozen=True)
class Phase:
    """A span of epochs with one set of trainable layers.

    Attributes:
        number: 1 (backbone frozen) or 2 (every layer); 0 for the one phase
            of a model without a pretrained backbone.
        first_epoch: Its first epoch, counted from 0.
        end_epoch: The epoch after its last.
        backbone_trainable: Whether the backbone trains.
        rate_factor: Its learning rate, as a fraction of the optimizer's.
    """

    number: int
    first_epoch: int
    end_epoch: int
    backbone_trainable: bool
    rate_factor: float

    @property
    def last(self):
        """Whether it is the run's last phase (phase 2, or the only one)."""
        return self.number != 1


def backbone_layers(model):
    """The model's KerasHub backbones (its layers that are `Backbone`s)."""
    return [layer for layer in model.layers if _is_backbone(layer)]


def _is_backbone(layer):
    return any(cls.__name__ == "Backbone" and cls.__module__.startswith("keras_hub")
               for cls in type(layer).__mro__)


def plan(config, model):
    """The phases of a run: two with a pretrained backbone, else one.

    Args:
        config: The run's `Config` (`training.epochs`,
            `training.freeze_backbone_epochs`, `training.fine_tune_lr_factor`).
        model: The built model.

    Returns:
        A list of `Phase`s covering epochs 0 to `training.epochs`, in order;
        a phase of no epochs is left out (`freeze_backbone_epochs = 0`: phase
        2 only, at the lower rate).
    """
    if not backbone_layers(model):
        return [whole_run(config["training"]["epochs"])]
    return pretrained_plan(config)


def whole_run(epochs):
    """The one phase of a model without a pretrained backbone."""
    return Phase(0, 0, epochs, True, 1.0)


def pretrained_plan(config):
    """The phases of a run with a pretrained backbone (see `plan`)."""
    training = config["training"]
    epochs = training["epochs"]
    frozen = min(training["freeze_backbone_epochs"], epochs)
    phases = [Phase(1, 0, frozen, False, 1.0),
              Phase(2, frozen, epochs, True, training["fine_tune_lr_factor"])]
    return [phase for phase in phases if phase.end_epoch > phase.first_epoch]


def phase_of(phases, epoch):
    """The phase epoch `epoch` (from 0) is in; the last phase past the end."""
    return next((phase for phase in phases if epoch < phase.end_epoch), phases[-1])


def set_trainable(model, phase):
    """Sets which layers train in `phase` (see the module's docstring)."""
    for backbone in backbone_layers(model):
        set_backbone_trainable(backbone, phase.backbone_trainable)


def set_backbone_trainable(backbone, trainable):
    """Freezes a backbone, or unfreezes every layer of it but its
    BatchNormalization layers (kept in inference mode, with their pretrained
    statistics)."""
    # Keras' rule for `trainable = False`: a frozen BatchNormalization layer
    # runs in inference mode (its moving statistics, not the batch's).
    backbone.trainable = trainable
    if trainable:
        for layer in backbone._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def enter(model, phase, compile_config):
    """Makes `model` train as in `phase`: its trainable layers, and a fresh
    compile (a new optimizer over them). Call it in the strategy's scope.

    Args:
        model: The built model.
        phase: The `Phase`.
        compile_config: `model.get_compile_config()` of the model as
            `model.py` compiled it, taken before any training.
    """
    set_trainable(model, phase)
    model.compile_from_config(compile_config)


def load_best_weights(model, path):
    """Loads a run's best weights into `model`, whatever phase they are of.

    The weights of an epoch of phase 1 hold the state of an optimizer over
    the head alone: loaded into a model whose optimizer covers every layer,
    Keras skips that state with a warning, and that is all that is needed
    to continue with the weights (predict, export, calibrate).

    Args:
        model: The built model.
        path: The `.weights.h5` file.
    """
    with optimizer_state_skipped():
        model.load_weights(str(path))


@contextlib.contextmanager
def optimizer_state_skipped():
    """Silences Keras' warning that saved optimizer state does not fit the
    model's optimizer: phase 1's (over the head alone) in phase 2."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield


def trainable_parameters(model):
    """The number of trainable parameters of `model` as its layers are set."""
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def describe(model, phases):
    """What each phase trains, for `run.json` and the report.

    Sets each phase's trainable layers in turn to count them, and leaves the
    model as in its first phase.

    Args:
        model: The built model.
        phases: `plan`'s phases.

    Returns:
        A list of dicts: `phase`, `epochs` (`[first, last]`, from 1),
        `trains` (words), `learning_rate_factor` and
        `trainable_parameters`; `[]` for a model without a backbone.
    """
    if phases[0].number == 0:
        return []
    described = []
    for phase in phases:
        set_trainable(model, phase)
        described.append({
            "phase": phase.number, "epochs": [phase.first_epoch + 1, phase.end_epoch],
            "trains": _trains(model, phase),
            "learning_rate_factor": phase.rate_factor,
            "trainable_parameters": trainable_parameters(model)})
    set_trainable(model, phases[0])
    return described


def _trains(model, phase):
    """What `phase` trains, in words."""
    if not phase.backbone_trainable:
        return "the head (backbone frozen)"
    batchnorm = any(isinstance(layer, keras.layers.BatchNormalization)
                    for backbone in backbone_layers(model)
                    for layer in backbone._flatten_layers(include_self=False))
    return "every layer" + (" (the backbone's BatchNormalization frozen)" if batchnorm else "")


def phase_lines(described):
    """One line per phase of `describe`'s dicts, for the user."""
    return [f"Phase {p['phase']} (epochs {p['epochs'][0]}-{p['epochs'][1]}): {p['trains']}, "
            f"{p['trainable_parameters']:,} trainable parameters"
            + (f", learning rate x {p['learning_rate_factor']:g}"
               if p["learning_rate_factor"] != 1 else "")
            for p in described]
