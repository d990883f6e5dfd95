"""The translator's model: yours to edit.

`build_model(hp, config, source_vocabulary_size, target_vocabulary_size)`
returns a compiled Keras model. keras-tuner calls it directly (`dltool
tune`); `dltool train` calls it with a fresh `keras_tuner.HyperParameters()`,
so every `hp.*` call returns its default, read from the `[model]` section of
config.toml. Read each hyperparameter through `hp` under the same name as its
config key.

The model takes two inputs, int32 token ids padded with 0:

- `source_ids` `(batch, source_length)`: the source sentence;
- `target_ids` `(batch, target_length)`: the translation so far, starting
  with the `[start]` token (teacher forcing: in training, the reference
  shifted right by one);

and returns logits `(batch, target_length, target_vocabulary_size)`: at each
position, the scores of the next target token. The exported model decodes
with it (greedy or beam search, inside the graph), so any model with these
inputs and output works; it must be causal (position t may only look at
target tokens up to t) and accept any length up to `data.max_length + 1`.

Two architectures, chosen by `model.architecture`:

- `rnn` (default): a bidirectional GRU or LSTM encoder, a GRU or LSTM
  decoder started from the encoder's final states, and dot-product attention
  from each decoder step over the encoder outputs;
- `transformer`: keras_hub's TransformerEncoder / TransformerDecoder over
  token and position embeddings, layer normalization first.

The loss is the cross-entropy of the next token and the accuracy the share
of next tokens predicted right, both over real tokens only (padding does not
count).
"""


import keras
import keras_hub
from keras import layers, ops

from dltool.core.errors import ConfigError

ARCHITECTURES = ("rnn", "transformer")
CELLS = {"gru": layers.GRU, "lstm": layers.LSTM}


def build_model(hp, config, source_vocabulary_size, target_vocabulary_size):
    """Builds and compiles an encoder-decoder translation model.

    Args:
        hp: A `keras_tuner.HyperParameters`.
        config: The project's config (`config["data"]`, `config.model`, ...).
        source_vocabulary_size: Source tokens (padding and unknown included).
        target_vocabulary_size: Target tokens (with `[start]` and `[end]`).

    Returns:
        A compiled `keras.Model` (inputs `source_ids`, `target_ids`; output
        next-token logits).

    Raises:
        ConfigError: if `model.architecture` or `model.cell` is not one of the
            names above.
    """
    defaults = config.model
    architecture = _choice(hp, "architecture", list(ARCHITECTURES), defaults["architecture"])
    embedding_dim = hp.Int("embedding_dim", 16, 1024, step=16, default=defaults["embedding_dim"])
    units = hp.Int("units", 16, 2048, step=16, default=defaults["units"])
    dropout = hp.Float("dropout", 0.0, 0.8, default=defaults["dropout"])
    learning_rate = hp.Float("learning_rate", 1e-5, 1e-1, sampling="log",
                             default=defaults["learning_rate"])
    cell = _choice(hp, "cell", list(CELLS), defaults["cell"])
    layers_count = hp.Int("transformer_layers", 1, 8, default=defaults["transformer_layers"])
    heads = hp.Int("heads", 1, 16, default=defaults["heads"])

    source_ids = keras.Input(shape=(None,), dtype="int32", name="source_ids")
    target_ids = keras.Input(shape=(None,), dtype="int32", name="target_ids")
    if architecture == "rnn":
        features = _rnn(source_ids, target_ids, source_vocabulary_size,
                        target_vocabulary_size, embedding_dim, units, dropout, cell)
    else:
        features = _transformer(source_ids, target_ids, source_vocabulary_size,
                                target_vocabulary_size, embedding_dim, units, dropout,
                                layers_count, heads, config["data"]["max_length"] + 2)
    # float32 logits even under a mixed precision policy.
    logits = layers.Dense(target_vocabulary_size, dtype="float32", name="logits")(features)
    model = keras.Model({"source_ids": source_ids, "target_ids": target_ids}, logits,
                        name=f"translator_{architecture}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=5.0),
                  loss=masked_loss, metrics=[masked_accuracy])
    return model


def _rnn(source_ids, target_ids, source_vocabulary_size, target_vocabulary_size,
         embedding_dim, units, dropout, cell):
    recurrent = CELLS[cell]
    states_per_direction = 2 if cell == "lstm" else 1
    # mask_zero: the recurrent layers skip padding, attention ignores it.
    x = layers.Embedding(source_vocabulary_size, embedding_dim, mask_zero=True)(source_ids)
    x = layers.Dropout(dropout)(x)
    encoded, *states = layers.Bidirectional(
        recurrent(units, return_sequences=True, return_state=True))(x)
    forward, backward = states[:states_per_direction], states[states_per_direction:]
    initial_state = [layers.Dense(units, activation="tanh")(layers.Concatenate()([f, b]))
                     for f, b in zip(forward, backward)]
    encoded = layers.Dense(units, name="attention_keys")(encoded)

    y = layers.Embedding(target_vocabulary_size, embedding_dim, mask_zero=True)(target_ids)
    y = layers.Dropout(dropout)(y)
    decoded = recurrent(units, return_sequences=True)(y, initial_state=initial_state)
    context = layers.Attention(use_scale=True)([decoded, encoded])
    features = layers.Concatenate()([decoded, context])
    # Down to embedding_dim before the output layer, the largest cost of
    # training (target_vocabulary_size outputs per token). Linear: with a tanh
    # here (Luong's attentional state) the loss stayed at that of predicting
    # the most frequent tokens for 3 epochs of the full English-French data.
    return layers.Dense(embedding_dim)(features)


def _transformer(source_ids, target_ids, source_vocabulary_size, target_vocabulary_size,
                 embedding_dim, units, dropout, layers_count, heads, max_length):
    # Padding: the embeddings' mask (mask_zero) goes with the tensors to each
    # TransformerEncoder and TransformerDecoder, which make it their attention
    # masks (the encoder's self-attention, the decoder's attention to the
    # source, and its causal self-attention). So padding changes no logit at a
    # real position (a test checks it). A layer inserted between them must
    # support masking, or pass the masks explicitly (`padding_mask`,
    # `encoder_padding_mask`, `decoder_padding_mask`, from `ids != 0`).
    # Keras' "will destroy the mask" warnings for layers inside keras_hub's
    # blocks are about masks already used: dltool's translator task silences
    # exactly those (dltool/tasks/translator.py).
    # Layer normalization first in each block (stable without a warm-up),
    # and once more after the last block.
    x = keras_hub.layers.TokenAndPositionEmbedding(
        source_vocabulary_size, max_length, embedding_dim, mask_zero=True)(source_ids)
    x = layers.Dropout(dropout)(x)
    for _ in range(layers_count):
        x = keras_hub.layers.TransformerEncoder(units, heads, dropout=dropout,
                                                normalize_first=True)(x)
    x = layers.LayerNormalization(epsilon=1e-5)(x)
    y = keras_hub.layers.TokenAndPositionEmbedding(
        target_vocabulary_size, max_length, embedding_dim, mask_zero=True)(target_ids)
    y = layers.Dropout(dropout)(y)
    for _ in range(layers_count):
        y = keras_hub.layers.TransformerDecoder(units, heads, dropout=dropout,
                                                normalize_first=True)(y, x)
    return layers.LayerNormalization(epsilon=1e-5)(y)


def masked_loss(y_true, y_pred):
    """Cross-entropy of each next token; 0 at padding.

    Keras averages it over the real tokens only: the logits carry the mask of
    `target_ids` (padding is id 0), which Keras applies to losses and metrics.
    """
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True) * mask


def masked_accuracy(y_true, y_pred):
    """1 where the next token is predicted right, else 0 (and 0 at padding)."""
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), y_true.dtype)
    return ops.cast(ops.equal(predicted, y_true), "float32") * mask


def _choice(hp, name, values, default):
    if default not in values:
        raise ConfigError(f"model.{name} must be one of {', '.join(values)}; got {default!r}")
    return hp.Choice(name, values, default=default)
