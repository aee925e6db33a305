"""The second walkthrough model: a small character-level decoder-only transformer, trained on the standard library.

A GPT-style decoder (Radford et al. 2019) at toy scale: character and position embeddings, ``depth`` pre-LayerNorm
blocks of causal multi-head self-attention and a GELU MLP, a final LayerNorm and a linear head over the
:data:`quantref.text.VOCAB_SIZE` characters. One block, for a ``(batch, time, width)`` input $x$::

    x = x + attn.out(causal_attention(attn.qkv(ln1(x))))     # qkv: width -> 3*width, out: width -> width
    x = x + mlp.down(gelu(mlp.up(ln2(x))))                    # up: width -> 4*width, down: 4*width -> width

Every projection is an ``nnx.Linear``, so :func:`quantref.nn.find_layers` sees them by path —
``blocks.0.attn.qkv``, ``blocks.0.attn.out``, ``blocks.0.mlp.up``, ``blocks.0.mlp.down``, …, ``head`` — and every
algorithm of the library (capture, fake-quant layers, GPTQ, PTQ) reaches them the way it reaches the CNN's layers.
:func:`scaling_pairs` names, for each projection, the operation before it that a per-channel scale can be folded
into (a LayerNorm, or the value columns of ``qkv``), which is what SmoothQuant and AWQ need.

Training (:func:`train`): AdamW on next-character cross-entropy over random windows of the training split,
linear warm-up then cosine decay, gradient clipping; deterministic from a seed (``nnx.Rngs(seed)`` initializes,
``numpy.random.default_rng((seed, step))`` draws each batch). :func:`load_or_train` caches the trained weights
like the CNN's (:mod:`quantref.cache`), keyed by the configs, the seed, the corpus fingerprint and the source of
this module and :mod:`quantref.text`. The metric is **bits per character** on held-out text,
$\\text{bpc} = -\\frac{1}{N}\\sum_t \\log_2 p(c_t \\mid c_{<t})$, and the perplexity per character is $2^{\\text{bpc}}$.

References:
  Vaswani et al., "Attention Is All You Need", arXiv:1706.03762, 2017.
  Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019: pre-LayerNorm blocks.
  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101, 2019 (AdamW).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from quantref import cache, text

__all__ = [
    "TransformerConfig",
    "TrainConfig",
    "ScalingPair",
    "CharTransformer",
    "scaling_pairs",
    "train",
    "cache_name",
    "load_or_train",
    "bits_per_char",
    "generate",
    "model_to_arrays",
    "model_from_arrays",
]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The architecture.

    Attributes:
      context: the longest input, in characters (learned position embeddings for each position).
      width: the model width $d$ (a multiple of 128, so that 128-row weight groups tile every kernel).
      depth: number of blocks.
      heads: attention heads (``width`` divisible by ``heads``).
      mlp_ratio: the MLP's hidden width over ``width``.
      vocab_size: number of character ids.
    """

    context: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    vocab_size: int = text.VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("context", "width", "depth", "heads", "mlp_ratio", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width must be divisible by heads, got width={self.width}, heads={self.heads}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of training.

    Attributes:
      steps: optimizer steps.
      batch_size: windows per step.
      learning_rate: peak AdamW learning rate.
      warmup_steps: linear warm-up from 0 to the peak; cosine decay to 0 after it.
      weight_decay: AdamW decoupled weight decay (on the kernels and embeddings, not on LayerNorms or biases).
      clip_norm: global gradient-norm clipping.
    """

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    clip_norm: float = 1.0


# --- the model ---------------------------------------------------------------------------------------------------


class Attention(nnx.Module):
    """Causal multi-head self-attention with one fused ``qkv`` projection and an ``out`` projection."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, time, width = x.shape
        head_width = width // self.heads
        # (batch, time, 3 * width) -> three (batch, heads, time, head_width)
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        q, k, v = (t.reshape(batch, time, self.heads, head_width).transpose(0, 2, 1, 3) for t in (q, k, v))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_width)  # (batch, heads, time, time)
        # Position t attends to positions <= t only: the future is masked out before the softmax.
        causal = jnp.tril(jnp.ones((time, time), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        mixed = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, time, width)
        return self.out(mixed)


class MLP(nnx.Module):
    """``down(gelu(up(x)))``, hidden width ``mlp_ratio * width``."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(config.width, rngs=rngs)
        self.attn = Attention(config.width, config.heads, rngs=rngs)
        self.ln2 = nnx.LayerNorm(config.width, rngs=rngs)
        self.mlp = MLP(config.width, config.mlp_ratio * config.width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nnx.Module):
    """The character-level decoder: ids ``(batch, time)`` → next-character logits ``(batch, time, vocab)``.

    Attributes:
      config: the :class:`TransformerConfig`.
      embed: character embeddings ``(vocab, width)``.
      position: position embeddings ``(context, width)``.
      blocks: the :class:`Block` s, ``blocks.0`` … ``blocks.<depth-1>``.
      ln_f: the final LayerNorm.
      head: ``width → vocab`` logits.
    """

    def __init__(self, config: TransformerConfig = TransformerConfig(), *, rngs: nnx.Rngs):
        """Initializes the weights from ``rngs`` (the same seed gives the same weights)."""
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.width, rngs=rngs)
        self.position = nnx.Embed(config.context, config.width, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.ln_f = nnx.LayerNorm(config.width, rngs=rngs)
        self.head = nnx.Linear(config.width, config.vocab_size, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Computes logits.

        Args:
          ids: character ids ``(batch, time)``, ``time <= config.context``. Integer ids, or the same ids as floats
            (which is how :func:`quantref.ptq.quantize_model`, written for float inputs, passes calibration
            windows; ids below $2^{24}$ are exact in float32).

        Returns:
          ``(batch, time, vocab)`` logits; position $t$ predicts character $t + 1$ from characters $0..t$.
        """
        ids = ids.astype(jnp.int32)
        x = self.embed(ids) + self.position(jnp.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ScalingPair(NamedTuple):
    """An operation and the layers reading its output, which a per-channel scale $s$ can move between exactly.

    Dividing channel $j$ of ``source``'s output by $s_j$ and multiplying input row $j$ of each layer's kernel by
    $s_j$ leaves the network's function unchanged: $(x / s)(\\operatorname{diag}(s) W) = x W$.

    Attributes:
      source: path of a LayerNorm (scale and bias are divided) or of a linear layer (its output columns
        ``columns`` are divided, kernel and bias).
      layers: paths of the linear layers that read exactly those channels.
      columns: ``(start, stop)`` of the source's output columns (for a linear source), or ``None`` for all.
    """

    source: str
    layers: tuple[str, ...]
    columns: tuple[int, int] | None = None


def scaling_pairs(config: TransformerConfig) -> list[ScalingPair]:
    """The foldable scalings of the model: ``ln1 → attn.qkv``, the value columns of ``qkv`` → ``attn.out``, and
    ``ln2 → mlp.up``, per block. ``mlp.down`` has none: a GELU sits before it, and GELU does not commute with a
    scale ($\\operatorname{gelu}(x/s) \\ne \\operatorname{gelu}(x)/s$)."""
    pairs = []
    for index in range(config.depth):
        block = f"blocks.{index}"
        pairs.append(ScalingPair(f"{block}.ln1", (f"{block}.attn.qkv",)))
        # The attention output is a convex mix of value vectors, so channel j of attn.out's input is linear in the
        # value column j: scaling that column scales the channel.
        pairs.append(ScalingPair(f"{block}.attn.qkv", (f"{block}.attn.out",), (2 * config.width, 3 * config.width)))
        pairs.append(ScalingPair(f"{block}.ln2", (f"{block}.mlp.up",)))
    return pairs


# --- training ----------------------------------------------------------------------------------------------------


def _loss(model: CharTransformer, batch: jax.Array) -> jax.Array:
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def _decay_mask(params: nnx.State) -> nnx.State:
    # Weight decay on matrices (kernels, embeddings) only, as in GPT-2 and nanoGPT.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


@functools.cache
def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.steps, config.warmup_steps + 1)
    )
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, b2=0.99, weight_decay=config.weight_decay, mask=_decay_mask),
    )


@nnx.jit
def _train_step(model: CharTransformer, optimizer: nnx.Optimizer, batch: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(_loss)(model, batch)
    optimizer.update(model, grads)
    return loss


def train(
    corpus: text.Corpus,
    *,
    seed: int = 0,
    config: TransformerConfig = TransformerConfig(),
    train_config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> CharTransformer:
    """Trains a fresh :class:`CharTransformer` on ``corpus.train``.

    Args:
      corpus: from :func:`quantref.text.load_corpus`.
      seed: seed of the initialization and of the batches.
      config: the architecture.
      train_config: the hyperparameters.
      progress: show a tqdm progress bar (with the training loss in bits per character) on stderr.

    Returns:
      The trained model.
    """
    model = CharTransformer(config, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, _optimizer(train_config), wrt=nnx.Param)
    bits = 1 / math.log(2)
    with tqdm(total=train_config.steps, desc="training", unit="step", disable=not progress) as bar:
        for step in range(train_config.steps):
            batch = text.random_windows(corpus.train, config.context, train_config.batch_size, (seed, step))
            loss = _train_step(model, optimizer, jnp.asarray(batch))
            bar.update()
            if (step + 1) % 50 == 0 or step + 1 == train_config.steps:
                # Reading the loss waits for the device: do it now and then, not every step.
                bar.set_postfix(bpc=f"{float(loss) * bits:.3f}")
    return model


# --- the cache ---------------------------------------------------------------------------------------------------


def model_to_arrays(model: CharTransformer) -> dict[str, np.ndarray]:
    """The model's parameters as named numpy arrays, keyed by their state path (``"blocks/0/attn/qkv/kernel"``)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(str(part) for part in path): np.asarray(variable[...]) for path, variable in flat}


def model_from_arrays(arrays: dict[str, np.ndarray], config: TransformerConfig) -> CharTransformer:
    """A :class:`CharTransformer` of ``config`` holding the parameters written by :func:`model_to_arrays`.

    Raises:
      ValueError: if the keys or shapes do not match the architecture.
    """
    model = CharTransformer(config, rngs=nnx.Rngs(0))
    template = model_to_arrays(model)
    if set(arrays) != set(template):
        raise ValueError(f"state keys differ from the model's: {sorted(set(arrays) ^ set(template))}")
    for key, expected in template.items():
        if arrays[key].shape != expected.shape or arrays[key].dtype != expected.dtype:
            raise ValueError(f"{key}: stored {arrays[key].dtype}{arrays[key].shape}, model has {expected.shape}")
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        variable[...] = jnp.asarray(arrays["/".join(str(part) for part in path)])
    return model


def cache_name(seed: int, config: TransformerConfig, train_config: TrainConfig, corpus: text.Corpus) -> str:
    """The cache entry of a trained model: ``"char_transformer-seed<seed>-<hash>"``, the hash over both configs,
    the corpus fingerprint and the source of :mod:`quantref.text` and this module."""
    digest = hashlib.sha256(f"{config!r}{train_config!r}{corpus.fingerprint}".encode())
    for path in (Path(text.__file__), Path(__file__)):
        digest.update(path.read_bytes())
    return f"char_transformer-seed{seed}-{digest.hexdigest()[:16]}"


def load_or_train(
    seed: int = 0,
    config: TransformerConfig = TransformerConfig(),
    train_config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> CharTransformer:
    """The walkthrough transformer trained on :func:`quantref.text.load_corpus`, from the cache if present.

    Args:
      seed: the training seed.
      config: the architecture.
      train_config: the hyperparameters.
      progress: show a progress bar if training is needed.

    Returns:
      The trained model.
    """
    corpus = text.load_corpus()
    name = cache_name(seed, config, train_config, corpus)
    arrays = cache.load_arrays(name)
    if arrays is not None:
        return model_from_arrays(arrays, config)
    model = train(corpus, seed=seed, config=config, train_config=train_config, progress=progress)
    cache.save_arrays(name, model_to_arrays(model))
    return model


# --- evaluation and sampling -------------------------------------------------------------------------------------


@nnx.jit
def _window_bits(model: nnx.Module, batch: jax.Array) -> jax.Array:
    logits = model(batch[:, :-1]).astype(jnp.float32)
    nats = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
    return nats.sum() / math.log(2)


def bits_per_char(model: nnx.Module, windows: np.ndarray, *, batch_size: int = 32) -> float:
    """Bits per character of the model on windows of text: the mean of $-\\log_2 p(c_{t+1} \\mid c_{\\le t})$.

    Any model called as :class:`CharTransformer` works (a fake-quant copy from :func:`quantref.nn.swap_layers`
    included). Perplexity per character is ``2 ** bits_per_char``.

    Args:
      model: the model.
      windows: ``(count, length + 1)`` ids from :func:`quantref.text.windows`.
      batch_size: windows per call.

    Returns:
      The mean over every predicted character.

    Raises:
      ValueError: if ``windows`` is not a non-empty ``(count, length + 1)`` integer array with ``length >= 1``.
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2 or windows.dtype.kind not in "iu":
        raise ValueError(f"windows must be a non-empty (count, length + 1) integer array, got {windows.shape}")
    total = 0.0
    for start in range(0, len(windows), batch_size):
        total += float(_window_bits(model, jnp.asarray(windows[start : start + batch_size], jnp.int32)))
    return total / (windows.shape[0] * (windows.shape[1] - 1))


@nnx.jit
def _next_logits(model: nnx.Module, window: jax.Array, position: jax.Array) -> jax.Array:
    return model(window)[0, position]


def generate(model: nnx.Module, prompt: str, length: int, *, temperature: float = 0.8, seed: int = 0) -> str:
    """Samples ``length`` characters after ``prompt``, each from $\\operatorname{softmax}(\\text{logits} / T)$.

    The model reads the last ``context`` characters (no cache: each step runs the window again, at a fixed
    shape, so it compiles once). The same seed, model and prompt give the same text.

    Args:
      model: the model (float or fake-quant).
      prompt: the text to continue (characters outside the vocabulary become the unknown id).
      length: characters to sample.
      temperature: $T > 0$; lower is greedier.
      seed: seed of ``jax.random``.

    Returns:
      The sampled continuation (without the prompt).

    Raises:
      ValueError: for an empty prompt, a negative length or a temperature that is not positive.
    """
    if not prompt:
        raise ValueError("prompt must be a non-empty str")
    if length < 0 or not temperature > 0:
        raise ValueError(f"need length >= 0 and temperature > 0, got length={length}, temperature={temperature}")
    context = _module_config(model).context
    ids = list(text.encode(prompt))
    key = jax.random.key(seed)
    for _ in range(length):
        recent = ids[-context:]
        window = np.zeros((1, context), np.int32)
        window[0, : len(recent)] = recent  # causal: the padding after the last character is never read
        logits = _next_logits(model, jnp.asarray(window), jnp.asarray(len(recent) - 1))
        key, sample = jax.random.split(key)
        ids.append(int(jax.random.categorical(sample, logits / temperature)))
    return text.decode(np.array(ids[len(ids) - length :], np.int64)) if length else ""


def _module_config(model: nnx.Module) -> TransformerConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"model must be a CharTransformer (or a copy of one), got {type(model).__name__}")
    return config
