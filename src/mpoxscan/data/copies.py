"""Finding copies of one photo: re-encoded, resized, cropped, rotated, mirrored or captioned.

Three stages, from cheap to careful:

1. **Hashes.** Identical bytes (SHA-256), and a DCT perceptual hash (pHash) of the whole photo
   and of a few slightly cropped versions: two photos are as close as their closest
   crop-to-whole pair (``phash_threshold`` bits of 64). This finds re-encoded and resized
   copies at once.
2. **Candidates.** Each photo is described by unit-length pretrained features of its whole and
   of a few windows (an ``Embedder``, e.g. ``mpoxscan.models.region_embedding.RegionEmbedder``,
   cached on disk by file hash). A crop of a photo looks like one of its windows, so two photos
   are as similar as the best whole-to-window cosine either way. Each photo keeps its ``top_k``
   most similar others above ``min_similarity``; the search is vectorised in blocks.
3. **Geometric check.** Each candidate pair is matched with SIFT local features (ratio test)
   and a RANSAC fit of one similarity transform (rotation, scale, shift), also against the
   mirror image: the pair is a copy when at least ``min_inliers`` matched points agree and
   the pixels agree wherever the transform overlays the two photos (``min_agreement``). Two
   photos of one lesion taken from different angles do not fit one similarity transform, a
   crop, rescale or rotation of one photo does. SIFT's scale space spans every octave of the
   photo, so a small crop of a large photo still matches.

The finder needs no network: stage 2 runs only when the caller passes an embedder (the data
layer does not import models). Defaults were chosen on the copies that the tests make.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import scipy.fft
from PIL import Image

from mpoxscan.data.array_cache import FeatureCache
from mpoxscan.data.datasets import DatasetIndex, ImageRecord
from mpoxscan.data.images import decode_image, image_sha256
from mpoxscan.errors import InvalidImageError

log = logging.getLogger(__name__)

#: Side to which photos are shrunk before hashing; the hash only looks at 32 x 32 pixels.
_HASH_WORKING_SIDE = 256
#: Centred crops hashed besides the whole photo, as fractions cut from every side.
_CENTRE_CROPS = (0.015, 0.03, 0.045)
#: Corner crops: this fraction cut from two adjacent sides.
_CORNER_CROP = 0.04
#: Side of the copy handed to the embedder (it resizes again to its own input size).
_EMBED_SIDE = 256
#: The pixel check compares thumbnails at 1/_THUMB_DIVISOR of the working side.
_THUMB_DIVISOR = 2
#: Side of the cells compared by the pixel check, and the contrast a cell needs to count.
_CELL = 8
_MIN_CELL_STD = 6.0
#: Rows of the candidate search computed at once (bounds memory at a few hundred MB).
_SEARCH_BLOCK = 256
#: Version of the cached local-feature verdicts: bump it when the check changes.
_VERDICT_VERSION = 2
#: Photos handed to the embedder at once (large enough for it to switch to its fast engine).
_EMBED_CHUNK = 256

Stage = Literal["exact", "phash", "geometric"]


class Embedder(Protocol):
    """Turns photos into unit-length features of their whole and windows.

    ``name`` identifies the numbers (model, weights, windows) for the on-disk cache; calling it
    on ``n`` photos returns ``(n, windows, dim)`` float32 with window 0 the whole photo.
    """

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class CopyConfig:
    """Thresholds of the copy finder; the defaults were chosen on the copies the tests make.

    Attributes:
        phash_threshold: largest pHash distance (bits of 64) of a stage-1 near-duplicate.
            Re-encoded, resized, 2-3 %-cropped copies are within 6; so are some different
            photos of smooth skin among thousands, so a near-duplicate must also pass the
            local-feature check of stage 3.
        top_k: candidates kept per photo in stage 2 (copies of one photo rarely exceed this).
        min_similarity: smallest whole-to-window cosine of a candidate: the tests' copies
            score 0.62-1.0 (mostly above 0.8), so this only trims the geometric checks.
        min_inliers: matched points that must agree on one similarity transform in stage 3.
            Copies of textured photos give 30-800, of smooth ones (a clock face) 8-20.
        working_side: longer side (pixels) at which local features are taken.
        max_features: SIFT keypoints kept per photo (the strongest; matching costs grow with
            the square of this).
        ratio: Lowe's ratio test for a local-feature match.
        reprojection_px: RANSAC tolerance in pixels at ``working_side``.
        min_agreement: share of the textured 8 x 8 cells where the fitted transform overlays
            the two photos whose pixels correlate. Copies agree nearly everywhere; two
            different photos that share only a caption, logo or watermark agree only there.
        workers: threads for reading photos and for the local features (Pillow, OpenCV and
            numpy release the GIL).
        cache_dir: folder where embeddings are cached by file hash; ``None`` keeps them in
            memory for the run only.
    """

    phash_threshold: int = 6
    top_k: int = 5
    min_similarity: float = 0.6
    min_inliers: int = 8
    working_side: int = 320
    max_features: int = 600
    ratio: float = 0.8
    reprojection_px: float = 5.0
    min_agreement: float = 0.5
    workers: int = 2
    cache_dir: Path | None = None


@dataclass(frozen=True)
class CopyPair:
    """Two files showing the same photo, and how sure the finder is.

    Attributes:
        a: one file.
        b: the other.
        stage: ``"exact"`` (identical bytes), ``"phash"`` (perceptual hash, confirmed by
            matched local features) or ``"geometric"`` (embedding candidate confirmed by
            matched local features).
        score: how alike they are, 0-1: 1 for exact copies, ``1 - distance / 64`` for pHash
            pairs, the whole-to-window cosine of their embeddings for geometric ones.
        inliers: matched points agreeing on one similarity transform (0 for exact copies).
        distance: pHash distance in bits (stage 1; ``None`` when not computed).
        mirrored: stage 3 matched one photo with the other's mirror image.
        where: what the pair straddles, filled in by the audit (e.g. ``"folders: test / train"``).
    """

    a: Path
    b: Path
    stage: Stage
    score: float
    inliers: int = 0
    distance: int | None = None
    mirrored: bool = False
    where: str = ""

    @property
    def exact(self) -> bool:
        """The two files have identical bytes."""
        return self.stage == "exact"

    def describe(self) -> str:
        """A few words a person can check: ``"identical"``, ``"pHash distance 3"``, or
        ``"87 matched points, cosine 0.91, mirrored"``."""
        if self.stage == "exact":
            return "identical"
        if self.stage == "phash":
            return f"pHash distance {self.distance}, {self.inliers} matched points"
        mirrored = ", mirrored" if self.mirrored else ""
        return f"{self.inliers} matched points, cosine {self.score:.2f}{mirrored}"


@dataclass(frozen=True)
class UnreadableFile:
    """A file that could not be read or decoded, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class GroupMerge:
    """Photo groups (class-qualified patient ids) joined because they share a copy.

    Attributes:
        group: the id every member now has (the smallest of them).
        members: all ids joined into it, ``group`` included, sorted.
    """

    group: str
    members: tuple[str, ...]


@dataclass
class CopyScan:
    """What :func:`scan_copies` found: the readable photos, their hashes, the pairs.

    Attributes:
        records: the readable records, in input order.
        sha256: file hash of each of ``records``.
        pairs: every copy pair found (``a`` before ``b`` in input order).
        unreadable: files that could not be decoded.
        notes: anything not checked, and why.
    """

    records: list[ImageRecord]
    sha256: list[str]
    pairs: list[CopyPair]
    unreadable: list[UnreadableFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_copies(
    records: Sequence[ImageRecord],
    *,
    embed: Embedder | None = None,
    config: CopyConfig | None = None,
) -> list[CopyPair]:
    """Find every pair of files among ``records`` that show the same photo.

    Args:
        records: the photos (of one set or several); unreadable files are skipped.
        embed: features for the candidate search (stage 2), e.g.
            ``mpoxscan.models.region_embedding.RegionEmbedder()``; without one only identical
            files and pHash near-duplicates (stage 1) are found.
        config: thresholds; ``CopyConfig()`` by default.

    Returns:
        The pairs, ``a`` before ``b`` in input order, each found by its cheapest stage.
    """
    return scan_copies(records, embed=embed, config=config).pairs


def scan_copies(
    records: Sequence[ImageRecord],
    *,
    embed: Embedder | None = None,
    config: CopyConfig | None = None,
) -> CopyScan:
    """:func:`find_copies`, also returning the hashes and the files that could not be read."""
    config = config or CopyConfig()
    loaded = _load(list(records), embed, config)
    hashed = _hash_pairs(loaded, config.phash_threshold)
    near = [(f.i, f.j, f.pair.score) for f in hashed if not f.pair.exact]
    notes, fresh = [], []
    if embed is None:
        notes.append("Cropped copies not searched: no embedder given (stage 1 only).")
    elif len(loaded.records) > 1:
        seen = {(f.i, f.j) for f in hashed}
        candidates = _candidates(loaded.embeddings, config.top_k, config.min_similarity)
        fresh = [(i, j, s) for i, j, s in candidates if (i, j) not in seen]
    if near or fresh:
        log.info("checking %d candidate pairs with local features", len(near) + len(fresh))
    checked = {(f.i, f.j): f for f in _verify(loaded, near + fresh, config)}
    pairs = [f for f in hashed if f.pair.exact]
    for f in hashed:
        # perceptual hashes of smooth skin photos collide across thousands of photos: a
        # near-duplicate counts only when its local features agree too
        if not f.pair.exact and (f.i, f.j) in checked:
            geometry = checked.pop((f.i, f.j)).pair
            pair = replace(f.pair, inliers=geometry.inliers, mirrored=geometry.mirrored)
            pairs.append(_Found(f.i, f.j, pair))
    pairs += checked.values()
    pairs.sort(key=lambda p: (p.i, p.j))
    return CopyScan(
        records=loaded.records,
        sha256=loaded.sha256,
        pairs=[p.pair for p in pairs],
        unreadable=loaded.unreadable,
        notes=notes,
    )


def merge_copy_groups(
    records: Sequence[ImageRecord], pairs: Sequence[CopyPair]
) -> tuple[list[ImageRecord], list[GroupMerge]]:
    """Give photos that are copies of each other one photo group, across classes and sources.

    Splitting by the merged groups keeps every copy of a photo on one side of a split, even
    when the copies are filed under two classes (for example acne in one source and dermatitis
    in another). Each merged group takes its smallest id. Copies with two different screening
    labels (mpox and not mpox) are label conflicts: they are merged too, and logged as a
    warning, because the audit should be read before such a set is trained on.

    Args:
        records: the photos.
        pairs: copy pairs among them, as :func:`find_copies` returns them.

    Returns:
        The records in order with ``patient`` rewritten where merged, and the merges made.
    """
    by_path = {record.path: record for record in records}
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    conflicts = []
    for pair in pairs:
        a, b = by_path.get(pair.a), by_path.get(pair.b)
        if a is None or b is None:
            continue
        if a.label != b.label:
            conflicts.append(f"{a.path.name} ({a.class_name}) = {b.path.name} ({b.class_name})")
        root_a, root_b = find(a.patient), find(b.patient)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            parent[high] = low
    if conflicts:
        log.warning(
            "%d copy pair(s) with two labels, merged into one group: %s",
            len(conflicts),
            "; ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else ""),
        )
    members: dict[str, set[str]] = defaultdict(set)
    for group in parent:
        members[find(group)].update((group, find(group)))
    merges = [GroupMerge(root, tuple(sorted(ids))) for root, ids in sorted(members.items())]
    for merge in merges:
        log.info("copies join photo groups %s into %s", ", ".join(merge.members), merge.group)
    merged = [replace(r, patient=find(r.patient)) if r.patient in parent else r for r in records]
    return merged, merges


def merge_copies(
    index: DatasetIndex,
    *,
    embed: Embedder | None = None,
    config: CopyConfig | None = None,
) -> tuple[DatasetIndex, list[GroupMerge]]:
    """The index with the photo groups of copies merged, ready to split (``train``, ``cv``).

    A pre-split layout is returned as it is: its folders are the user's split (the audit
    reports copies across them).

    Args:
        index: the scanned dataset.
        embed: features for the crop-robust stage (see :func:`find_copies`).
        config: thresholds.

    Returns:
        The merged index and the merges made.
    """
    if index.layout == "presplit":
        return index, []
    pairs = find_copies(index.records, embed=embed, config=config)
    records, merges = merge_copy_groups(index.records, pairs)
    return replace(index, records=records), merges


def apply_group_merges(
    records: Sequence[ImageRecord], merges: Sequence[GroupMerge]
) -> list[ImageRecord]:
    """Rewrite photo groups as recorded merges say (to rebuild a bundle's split exactly).

    Args:
        records: the photos.
        merges: merges as :func:`merge_copy_groups` made them.

    Returns:
        The records in order, each member group renamed to its merge's group.
    """
    into = {member: merge.group for merge in merges for member in merge.members}
    return [replace(r, patient=into[r.patient]) if r.patient in into else r for r in records]


def perceptual_hash(img: Image.Image) -> int:
    """Return the 64-bit DCT perceptual hash (pHash) of an image.

    The image is shrunk to 32 x 32 gray pixels (area average); the hash has one bit per
    coefficient of the 8 x 8 lowest-frequency DCT block, set when it is above their median.

    Args:
        img: any Pillow image.

    Returns:
        The hash as an unsigned 64-bit integer.
    """
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64)
    low = scipy.fft.dctn(gray, type=2)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hash_pairs(phashes: np.ndarray, other: np.ndarray | None, threshold: int) -> Iterator[tuple]:
    """``(i, j, distance)`` of photo pairs whose crop hashes are within ``threshold``.

    With ``other`` ``None`` the pairs are within ``phashes`` (``i < j``); otherwise ``i``
    indexes ``phashes`` and ``j`` indexes ``other``. The distance of two photos is the smallest
    distance between the whole of one and any crop of the other.

    Args:
        phashes: ``(n, crops)`` uint64 hashes, the whole photo's first (see ``crop_hashes``).
        other: a second such array, or ``None``.
        threshold: largest distance yielded.
    """
    b = phashes if other is None else other
    for i in range(len(phashes)):
        # crops of photo i vs the whole of each other photo, and the whole of i vs their crops
        to_whole = _popcount(phashes[i][:, None] ^ b[None, :, 0]).min(axis=0)
        to_crops = _popcount(phashes[i][0] ^ b).min(axis=1)
        dist = np.minimum(to_whole, to_crops)
        start = i + 1 if other is None else 0
        for j in np.flatnonzero(dist[start:] <= threshold) + start:
            yield i, int(j), int(dist[j])


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    bits = np.unpackbits(x.astype(np.uint64)[..., None].view(np.uint8), axis=-1)
    return bits.sum(axis=-1).astype(np.int64)


def crop_hashes(img: Image.Image) -> list[int]:
    """Hashes of the whole photo (first) and of its slightly cropped versions."""
    gray = img.convert("L")
    if max(gray.size) > _HASH_WORKING_SIDE:
        gray.thumbnail((_HASH_WORKING_SIDE, _HASH_WORKING_SIDE), Image.Resampling.BILINEAR)
    w, h = gray.size
    boxes = [(0, 0, w, h)]
    for cut in _CENTRE_CROPS:
        dx, dy = round(w * cut), round(h * cut)
        boxes.append((dx, dy, w - dx, h - dy))
    dx, dy = round(w * _CORNER_CROP), round(h * _CORNER_CROP)
    boxes += [(dx, dy, w, h), (0, 0, w - dx, h - dy), (dx, 0, w, h - dy), (0, dy, w - dx, h)]
    return [perceptual_hash(gray.crop(box)) for box in boxes]


#: Hashes per photo that ``crop_hashes`` returns.
N_CROP_HASHES = 1 + len(_CENTRE_CROPS) + 4


@dataclass
class _Loaded:
    records: list[ImageRecord]
    sha256: list[str]
    phashes: np.ndarray  # (n, N_CROP_HASHES) uint64
    embeddings: np.ndarray | None  # (n, windows, dim) float32
    unreadable: list[UnreadableFile]


@dataclass
class _Found:
    i: int
    j: int
    pair: CopyPair


def _load(records: list[ImageRecord], embed: Embedder | None, config: CopyConfig) -> _Loaded:
    """Decode each photo once: file hash, crop hashes, and embeddings not yet cached."""
    cache = FeatureCache(config.cache_dir)
    kept, shas, hashes, unreadable = [], [], [], []
    to_embed: list[tuple[int, Image.Image]] = []
    wanted = None if embed is None else lambda sha: cache.get(_cache_key(embed, sha)) is None
    with ThreadPoolExecutor(max(1, config.workers)) as pool:  # Pillow decodes without the GIL
        read = pool.map(lambda record: _read_for_scan(record, wanted), records)
        for record, photo in zip(records, read, strict=True):
            if isinstance(photo, UnreadableFile):
                unreadable.append(photo)
                continue
            sha, crop_hash, thumb = photo
            kept.append(record)
            shas.append(sha)
            hashes.append(crop_hash)
            if thumb is not None:
                to_embed.append((len(kept) - 1, thumb))
    phashes = np.array(hashes, dtype=np.uint64).reshape(len(kept), N_CROP_HASHES)
    embeddings = None
    if embed is not None and kept:
        log.info("embedding %d photos (%d cached)", len(to_embed), len(kept) - len(to_embed))
        while to_embed:  # in chunks, letting go of each chunk's thumbnails once embedded
            chunk, to_embed = to_embed[:_EMBED_CHUNK], to_embed[_EMBED_CHUNK:]
            for (row, _), vectors in zip(chunk, embed([img for _, img in chunk]), strict=True):
                cache.put(_cache_key(embed, shas[row]), vectors.astype(np.float16))
        # the cache keeps what it was given or read in memory: no file is read twice
        embeddings = np.stack([cache.get(_cache_key(embed, sha)) for sha in shas])
        embeddings = embeddings.astype(np.float32)
    return _Loaded(kept, shas, phashes, embeddings, unreadable)


def _read_for_scan(
    record: ImageRecord, wanted: Callable[[str], bool] | None
) -> tuple[str, list[int], Image.Image | None] | UnreadableFile:
    """One photo's file hash, crop hashes, and its thumbnail for the embedder when
    ``wanted(sha)`` says it is not embedded yet (``None``: no embedder)."""
    try:
        data = record.path.read_bytes()
        img = decode_image(data)
    except (InvalidImageError, OSError) as exc:
        return UnreadableFile(record.path, str(exc))
    sha = image_sha256(data)
    crop_hash = crop_hashes(img)
    if wanted is None or not wanted(sha):
        return sha, crop_hash, None
    img.thumbnail((_EMBED_SIDE, _EMBED_SIDE), Image.Resampling.BILINEAR)
    return sha, crop_hash, img


def _cache_key(embed: Embedder, sha: str) -> str:
    return f"{embed.name}-{sha}"


def _hash_pairs(loaded: _Loaded, threshold: int) -> list[_Found]:
    """Stage 1: identical files and pHash near-duplicates."""
    found = []
    for i, j, d in hash_pairs(loaded.phashes, None, threshold):
        a, b = loaded.records[i].path, loaded.records[j].path
        if loaded.sha256[i] == loaded.sha256[j]:
            found.append(_Found(i, j, CopyPair(a, b, "exact", 1.0, distance=0)))
        else:
            found.append(_Found(i, j, CopyPair(a, b, "phash", 1 - d / 64, distance=d)))
    # byte-identical files are always pHash-close; the set view guards odd decoders
    seen = {(f.i, f.j) for f in found}
    by_sha: dict[str, list[int]] = defaultdict(list)
    for row, sha in enumerate(loaded.sha256):
        by_sha[sha].append(row)
    for rows in by_sha.values():
        for k, i in enumerate(rows):
            for j in rows[k + 1 :]:
                if (i, j) not in seen:
                    a, b = loaded.records[i].path, loaded.records[j].path
                    found.append(_Found(i, j, CopyPair(a, b, "exact", 1.0, distance=0)))
    return found


def _candidates(
    embeddings: np.ndarray, top_k: int, min_similarity: float
) -> list[tuple[int, int, float]]:
    """Stage 2: ``(i, j, cosine)`` with ``i < j``, each photo's ``top_k`` best partners.

    The similarity of two photos is the best cosine between the whole of one and any window of
    the other, either way round: the whole-to-windows matrix ``W`` (one matrix product per
    block of rows) and its transpose, ``max(W, W.T)``. ``W`` is ``n x n`` float32 (65 MB at
    4,000 photos).
    """
    n, windows, dim = embeddings.shape
    whole = np.ascontiguousarray(embeddings[:, 0])
    all_windows = embeddings.reshape(n * windows, dim)
    to_windows = np.empty((n, n), np.float32)
    for start in range(0, n, _SEARCH_BLOCK):
        rows = slice(start, min(n, start + _SEARCH_BLOCK))
        to_windows[rows] = (whole[rows] @ all_windows.T).reshape(-1, n, windows).max(axis=2)
    best: dict[tuple[int, int], float] = {}
    k = min(top_k, n - 1)
    for start in range(0, n, _SEARCH_BLOCK):
        rows = slice(start, min(n, start + _SEARCH_BLOCK))
        sims = np.maximum(to_windows[rows], to_windows[:, rows].T)
        sims[np.arange(sims.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for offset, partners in enumerate(top):
            i = rows.start + offset
            for j in partners:
                s = float(sims[offset, j])
                if s >= min_similarity:
                    key = (min(i, int(j)), max(i, int(j)))
                    best[key] = max(best.get(key, s), s)
    return sorted((i, j, s) for (i, j), s in best.items())


@dataclass
class _Features:
    """SIFT keypoints (x, y at ``working_side``) and descriptors of a photo, and its thumbnail."""

    points: np.ndarray  # (k, 2) float32
    descriptors: np.ndarray  # (k, 128) uint8
    thumb: np.ndarray  # gray, contrast-equalised, at working_side // _THUMB_DIVISOR


def _verify(
    loaded: _Loaded, candidates: list[tuple[int, int, float]], config: CopyConfig
) -> list[_Found]:
    """Stage 3: keep the candidates whose local features agree on one similarity transform.

    With ``config.cache_dir``, each pair's result is cached by the two files' hashes (and the
    stage's settings), so a later run over the same photos (``train`` after ``audit``, every
    ``cv``) checks only the pairs it has not seen.
    """
    cache = FeatureCache(config.cache_dir) if config.cache_dir is not None else None
    keys = [_verdict_key(loaded.sha256[i], loaded.sha256[j], config) for i, j, _ in candidates]
    known = [None if cache is None else cache.get(key) for key in keys]
    todo = [k for k, verdict in enumerate(known) if verdict is None]
    inliers = [0 if verdict is None else int(verdict[0]) for verdict in known]
    fresh = _signed_inliers(loaded, [candidates[k][:2] for k in todo], config)
    for k, n in zip(todo, fresh, strict=True):
        inliers[k] = n
        if cache is not None:
            cache.put(keys[k], np.array([n], np.int32))
    found = []
    for (i, j, similarity), n in zip(candidates, inliers, strict=True):
        if abs(n) >= config.min_inliers:
            a, b = loaded.records[i].path, loaded.records[j].path
            pair = CopyPair(a, b, "geometric", round(similarity, 4), abs(n), mirrored=n < 0)
            found.append(_Found(i, j, pair))
    return found


def _verdict_key(sha_a: str, sha_b: str, config: CopyConfig) -> str:
    """Cache key of one pair's local-feature check: both files and every setting it uses."""
    settings = (
        *(config.working_side, config.max_features, config.ratio, config.reprojection_px),
        *(config.min_agreement, _THUMB_DIVISOR, _CELL, _MIN_CELL_STD, _VERDICT_VERSION),
    )
    digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
    low, high = sorted((sha_a, sha_b))
    return f"copycheck-{digest}-{low[:32]}-{high[:32]}"


def _signed_inliers(loaded: _Loaded, pairs: list[tuple[int, int]], config: CopyConfig) -> list[int]:
    """Matched points of each pair; negative when they matched ``b``'s mirror image.

    Features are taken once per photo (OpenCV and numpy release the GIL, so ``workers``
    threads share the work); a pair that fails is tried again with the mirror image of ``b``,
    whose features are derived from ``b``'s (:func:`_mirrored`), not taken again.
    """
    if not pairs:
        return []
    paths = [record.path for record in loaded.records]

    def features(rows: set[int]) -> dict[int, _Features | None]:
        ordered = sorted(rows)
        extract = lambda row: _local_features(paths[row], config)  # noqa: E731
        return dict(zip(ordered, pool.map(extract, ordered), strict=True))

    def check(pairs: list[tuple[int, int]], a: dict, b: dict) -> list[int]:
        count = lambda pair: _inliers(a[pair[0]], b[pair[1]], config)  # noqa: E731
        return list(pool.map(count, pairs))

    with ThreadPoolExecutor(max(1, config.workers)) as pool:
        plain = features({r for pair in pairs for r in pair})
        inliers = check(pairs, plain, plain)
        retry = [k for k, n in enumerate(inliers) if n < config.min_inliers]
        mirror = {row: _mirrored(plain[row]) for row in {pairs[k][1] for k in retry}}
        for k, n in zip(retry, check([pairs[k] for k in retry], plain, mirror), strict=True):
            inliers[k] = -n  # negative: matched with the mirror image
    return inliers


def _local_features(path: Path, config: CopyConfig) -> _Features | None:
    """SIFT features of a photo at ``working_side``, and the thumbnail for the pixel check.

    The gray image is contrast-equalised first (CLAHE), so a brightened or low-contrast copy
    yields the same keypoints as its original. One pass covers every scale: a second pass at
    half size (tried before) mostly repeated the coarse keypoints, and the repeats defeated
    the ratio test on exactly those (benchmarks/audit.md).
    """
    try:
        img = decode_image(path).convert("L")
    except (InvalidImageError, OSError):
        return None
    gray = np.asarray(img)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    # a low contrast threshold: skin and smooth photos give few keypoints at the default 0.04
    sift = cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=0.01)
    working = clahe.apply(_resize_longer_side(gray, config.working_side))
    thumb = clahe.apply(_resize_longer_side(gray, config.working_side // _THUMB_DIVISOR))
    keypoints, descriptors = sift.detectAndCompute(working, None)
    if descriptors is None:
        return _Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), thumb)
    points = np.array([k.pt for k in keypoints], np.float32)
    descriptors = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)  # 4x smaller
    return _Features(points, descriptors, thumb)


def _resize_longer_side(gray: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(gray.shape)
    dims = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, dims, interpolation=cv2.INTER_AREA)


#: SIFT orientation bins of a mirrored patch: the mirror negates angles relative to the keypoint.
_MIRROR_BINS = (8 - np.arange(8)) % 8


def _mirrored(features: _Features | None) -> _Features | None:
    """The features of the photo's mirror image, from its own: x reflected, and in each SIFT
    descriptor (4 x 4 cells of 8 orientation bins, laid out along the keypoint's orientation)
    the rows of cells reversed and the bins negated. This reproduces what SIFT computes on the
    mirrored image for the keypoints it finds there (checked on the tests' photos) at no cost;
    the reflection's offset does not matter, a similarity transform absorbs it."""
    if features is None:
        return None
    points = features.points.copy()
    points[:, 0] = features.thumb.shape[1] * _THUMB_DIVISOR - 1 - points[:, 0]
    cells = features.descriptors.reshape(-1, 4, 4, 8)[:, ::-1][..., _MIRROR_BINS]
    return _Features(
        points,
        np.ascontiguousarray(cells.reshape(-1, 128)),
        np.ascontiguousarray(features.thumb[:, ::-1]),
    )


def _ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(ia, ib)`` of descriptor matches that pass Lowe's ratio test (numpy, BLAS).

    The two nearest neighbours come from two ``argmin`` passes over ``|b|^2 - 2 a.b`` (``|a|^2``
    is the same along a row), three times faster than a partial sort of the full distances.
    """
    a, b = a.astype(np.float32), b.astype(np.float32)
    scores = a @ b.T
    scores *= -2
    scores += (b * b).sum(1)[None, :]
    rows = np.arange(len(scores))
    nearest = scores.argmin(axis=1)
    first = scores[rows, nearest]
    scores[rows, nearest] = np.inf
    second = scores.min(axis=1) if scores.shape[1] > 1 else np.full(len(rows), np.inf)
    norms = (a * a).sum(1)
    dist1 = np.sqrt(np.maximum(first + norms, 0))
    dist2 = np.sqrt(np.maximum(second + norms, 0))
    keep = dist1 < ratio * dist2
    return np.flatnonzero(keep), nearest[keep]


def _inliers(a: _Features | None, b: _Features | None, config: CopyConfig) -> int:
    """Matched points of ``a`` and ``b`` that agree on one RANSAC similarity transform."""
    if a is None or b is None:
        return 0
    if len(a.descriptors) > len(b.descriptors):
        a, b = b, a  # match the sparser photo into the richer one: the result is symmetric
    if len(a.descriptors) < 3 or len(b.descriptors) < 2:
        return 0
    ia, ib = _ratio_matches(a.descriptors, b.descriptors, config.ratio)
    if len(ia) < max(3, config.min_inliers):
        return 0
    src, dst = a.points[ia], b.points[ib]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.reprojection_px
    )
    if transform is None or mask is None:
        return 0
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    if not 0.1 <= scale <= 10:
        return 0
    # one point matched twice (SIFT gives a point two orientations) counts once
    inliers = len(np.unique(np.rint(src[mask.ravel() > 0]).astype(np.int32), axis=0))
    if inliers < config.min_inliers:
        return inliers
    # a shared caption, logo or watermark matches too, but the rest of the photos does not
    if _overlay_agreement(a.thumb, b.thumb, transform) < config.min_agreement:
        return 0
    return inliers


def _overlay_agreement(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> float:
    """Share of the textured cells of ``a`` that ``b``, overlaid by ``transform`` (``a`` ->
    ``b`` coordinates at ``working_side``), agrees with (cell correlation above 0.5).

    A copy agrees almost everywhere it overlaps its original (except under an added caption);
    two different photos that share a caption, logo or watermark agree only there.
    """
    scaled = transform.astype(np.float32).copy()
    scaled[:, 2] /= _THUMB_DIVISOR  # thumbnails are _THUMB_DIVISOR times smaller
    size = (a.shape[1], a.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(b, scaled, size, flags=flags).astype(np.float32)
    overlap = cv2.warpAffine(np.full_like(b, 255), scaled, size, flags=flags) == 255
    rows, cols = a.shape[0] // _CELL, a.shape[1] // _CELL
    if rows == 0 or cols == 0:
        return 0.0

    def cells(image: np.ndarray) -> np.ndarray:
        cut = image[: rows * _CELL, : cols * _CELL].astype(np.float32)
        return cut.reshape(rows, _CELL, cols, _CELL).transpose(0, 2, 1, 3).reshape(-1, _CELL**2)

    x, y, inside = cells(a), cells(warped), cells(overlap).min(axis=1) > 0
    x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    sx, sy = np.sqrt((x * x).mean(axis=1)), np.sqrt((y * y).mean(axis=1))
    textured = inside & (sx > _MIN_CELL_STD) & (sy > _MIN_CELL_STD)
    if textured.sum() < 4:
        return 0.0
    correlation = (x * y).mean(axis=1)[textured] / (sx[textured] * sy[textured])
    return float((correlation > 0.5).mean())
