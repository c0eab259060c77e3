"""A chunk's heads on their kept features: which rows each head trains, and how they are stored.

A head keeping k of D features needs only k rows of its first kernel, so a
chunk trains on the kept columns alone, ``x_batch[:, index]`` (pruned features
are skipped, not multiplied by zero). ``pack`` lays a chunk's rows out as its
``ChunkLayout`` says (``plan.chunk_layouts``):

  * per head: head k's kept rows padded to the chunk's capacity c, a
    (K, c, H) kernel (c = D and masked inputs: the dense kernel);
  * packed: tiles of r rows, head k owning ceil(k_kept / r) consecutive
    tiles, a (T, r, H) kernel; a head's first-layer product is the sum of its
    tiles' products (``Chunk.sum_tiles``). A chunk mixing heads of 100 and
    2,000 kept features trains about the sum of their widths, not K times the
    widest: 32 heads of the authors' initial masks, one epoch on the CPU, took
    27.3 s padded to the widest head, 10.9 s packed.

Padded rows point at feature D, a zero column appended to the data, so they see
zero inputs and their weights never move. ``Chunk.unpack`` puts the trained
rows back into (K, D, H) kernels, pruned rows at their initial values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from evojax_prune import head
from evojax_prune.train.plan import ChunkLayout


def _repeat(array: jax.Array, times: int) -> jax.Array:
    """(...) -> (times, ...): the same initial weights for every head."""
    return jnp.broadcast_to(array, (times, *array.shape))


def layout_level(layouts: tuple[ChunkLayout, ...], counts: jax.Array) -> jax.Array:
    """Index of the smallest layout that holds a chunk whose heads keep ``counts`` (K,) features.

    Padding heads count -1 (they keep nothing).
    """
    if layouts[0].per_head:
        return jnp.searchsorted(jnp.asarray([layout.tile_rows for layout in layouts]), jnp.max(counts))
    tiles = jnp.sum(-(-jnp.maximum(counts, 0) // layouts[0].tile_rows))
    return jnp.searchsorted(jnp.asarray([layout.num_tiles for layout in layouts]), tiles)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """K heads of one chunk, laid out for training; traced arrays, built by ``pack``.

    Attributes:
      layout: the chunk's ``ChunkLayout``.
      tile_sum: ``"gather"`` or ``"scatter"`` (``TrainingPlan.tile_sum``).
      masks: (K, D) bool; valid: (K,) bool, real heads (padding never runs).
      counts: (K,) int32, kept features per head (0 for padding heads).
      x: (N, D + 1) float32, the data with a trailing zero column; y: (N,) int32.
      index: (T, r) int32, the feature each row of the first kernel reads (D:
        padding), T = K when not packed; None for the dense layout.
      tile_head: (T,) int32, sorted, the head each tile belongs to (K: an
        unused tile); None unless packed.
      tile_start: (K,) int32, each head's first tile; None unless packed.
      neurons_kept: (K, H) float32 0/1 masks of the first and the second
        hidden layer's neurons, None where the chromosome prunes none there.
      hidden_layers: 1 or 2.
    """

    layout: ChunkLayout
    tile_sum: str
    masks: jax.Array
    valid: jax.Array
    counts: jax.Array
    x: jax.Array
    y: jax.Array
    index: jax.Array | None
    tile_head: jax.Array | None
    tile_start: jax.Array | None
    neurons_kept: tuple[jax.Array | None, jax.Array | None] = (None, None)
    hidden_layers: int = 1

    @property
    def num_heads(self) -> int:
        return self.masks.shape[0]

    @property
    def num_features(self) -> int:
        return self.masks.shape[1]

    @property
    def packed(self) -> bool:
        return not self.layout.per_head

    def first_layer_inputs(self, x_batch: jax.Array) -> jax.Array:
        """(B, D + 1) minibatch -> each row block's inputs: (T, B, r), or (K, B, D) masked when dense."""
        if self.index is not None:
            return jax.vmap(lambda columns: x_batch[:, columns])(self.index)
        float_masks = self.masks.astype(x_batch.dtype)
        return x_batch[None, :, : self.num_features] * float_masks[:, None, :]

    def sum_tiles(self, products: jax.Array) -> jax.Array:
        """(T, B, H) tile products -> (K, B, H): each head's sum over its tiles (packed only)."""
        num_heads, rows, num_tiles = self.num_heads, self.layout.tile_rows, self.layout.num_tiles
        if self.tile_sum == "gather":
            most = -(-self.num_features // rows)  # tiles of the widest head
            place = jnp.arange(most)
            tiles = jnp.minimum(self.tile_start[:, None] + place, num_tiles - 1)  # (K, most)
            own = place < (-(-self.counts // rows))[:, None]
            return jnp.sum(jnp.where(own[:, :, None, None], products[tiles], 0.0), axis=1)
        return jax.ops.segment_sum(products, self.tile_head, num_segments=num_heads, indices_are_sorted=True)

    def per_tile(self, flags: jax.Array) -> jax.Array:
        """(K,) bool -> one flag per row block of the first kernel: (K,), or (T,) when packed."""
        if self.tile_head is None:
            return flags
        return jnp.take(flags, self.tile_head, mode="fill", fill_value=False)

    def per_leaf(self, flags: jax.Array) -> head.HeadParams:
        """(K,) bool -> ``HeadParams`` of flags, one per leading index of each training leaf."""
        return head.HeadParams(hidden_kernel=self.per_tile(flags), output_kernel=flags, output_bias=flags,
                               second_kernel=flags if self.hidden_layers == 2 else None)

    def training_params(self, init_params: head.HeadParams, kernel_transposed: bool) -> head.HeadParams:
        """The shared initial weights as this chunk trains them: first kernel (T, r, H), or (K, H, c)."""
        if self.index is not None:
            # Row D of the padded kernel is zero; padded rows see zero inputs and stay so.
            padded_kernel = jnp.concatenate(
                [init_params.hidden_kernel, jnp.zeros_like(init_params.hidden_kernel[:1])]
            )
            hidden_kernel = padded_kernel[self.index]
        else:
            hidden_kernel = _repeat(init_params.hidden_kernel, self.num_heads)
        params = head.HeadParams(
            hidden_kernel=hidden_kernel,
            output_kernel=_repeat(init_params.output_kernel, self.num_heads),
            output_bias=_repeat(init_params.output_bias, self.num_heads),
            second_kernel=None if init_params.second_kernel is None
            else _repeat(init_params.second_kernel, self.num_heads),
        )
        if kernel_transposed:
            params = params.replace(hidden_kernel=jnp.swapaxes(params.hidden_kernel, 1, 2))
        return params

    def unpack(self, trained: head.HeadParams, init_params: head.HeadParams,
               kernel_transposed: bool) -> head.HeadParams:
        """Trained weights in training layout -> (K, D, H) kernels, pruned rows at their initial values."""
        if kernel_transposed:
            trained = trained.replace(hidden_kernel=jnp.swapaxes(trained.hidden_kernel, 1, 2))
        if self.index is None:
            return trained
        rows, num_tiles = self.layout.tile_rows, self.layout.num_tiles
        # Kept feature d is number cumsum(mask)[d] - 1 of its head's kept list, which sits
        # in the head's tile of that number // r (the head's only tile when not packed).
        place = jnp.maximum(jnp.cumsum(self.masks, axis=1) - 1, 0)  # (K, D)
        first = self.tile_start if self.packed else jnp.arange(self.num_heads)
        tile = jnp.minimum(place // rows + first[:, None], num_tiles - 1)
        kept_rows = trained.hidden_kernel[tile, place % rows]
        kept = (self.masks & self.valid[:, None])[:, :, None]
        return trained.replace(hidden_kernel=jnp.where(kept, kept_rows, init_params.hidden_kernel[None]))


def pack(masks: jax.Array, valid: jax.Array, x: jax.Array, y: jax.Array, layout: ChunkLayout,
         tile_sum: str, neurons_kept: tuple[jax.Array | None, jax.Array | None] = (None, None),
         hidden_layers: int = 1) -> Chunk:
    """A ``Chunk`` of K heads stored as ``layout`` (the masks must fit it).

    ``masks`` (K, D) bool, the features each head keeps, ``valid`` (K,) bool,
    ``x`` (N, D + 1) with the trailing zero column, ``y`` (N,) int32,
    ``neurons_kept`` (K, H) bool or None each (``Chunk.neurons_kept``).
    """
    neurons_kept = tuple(None if kept is None else kept.astype(jnp.float32) for kept in neurons_kept)
    num_heads, num_features = masks.shape
    rows, num_tiles = layout.tile_rows, layout.num_tiles
    counts = jnp.where(valid, jnp.sum(masks, axis=1), 0)  # padding heads take no rows
    tile_head = tile_start = None
    if not layout.per_head:
        # Head k owns tiles [start_k, end_k); tile t holds rows offset_t ... offset_t + r - 1 of
        # its head's kept features. Tiles past the last head belong to "head K": never used.
        tiles_per_head = -(-counts // rows)
        tile_end = jnp.cumsum(tiles_per_head)
        tile_head = jnp.searchsorted(tile_end, jnp.arange(num_tiles), side="right").astype(jnp.int32)
        owner = jnp.minimum(tile_head, num_heads - 1)
        tile_start = tile_end - tiles_per_head
        offset = (jnp.arange(num_tiles) - tile_start[owner]) * rows
    else:
        owner, offset = jnp.arange(num_heads), jnp.zeros((num_heads,), jnp.int32)
    index = None
    if not layout.per_head or rows < num_features:
        position = offset[:, None] + jnp.arange(rows)  # (T, r): places in the owner's kept list
        kept_first = jnp.argsort(~masks, axis=1, stable=True).astype(jnp.int32)  # (K, D)
        kept = jnp.take_along_axis(kept_first[owner], jnp.minimum(position, num_features - 1), axis=1)
        # A tile past the last head's starts beyond that head's count, so it is all padding too.
        index = jnp.where(position < counts[owner][:, None], kept, num_features)
    return Chunk(layout, tile_sum, masks, valid, counts, x, y, index, tile_head, tile_start, neurons_kept,
                 hidden_layers)
