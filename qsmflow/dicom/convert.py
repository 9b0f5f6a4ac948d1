"""Scanner DICOM folder → BIDS raw multi-echo GRE dataset.

:func:`find_acquisitions` pairs series into acquisitions (magnitude + phase series, or one series
holding real + imaginary or magnitude + phase images) and lists every other series with the
reason it is skipped; :func:`load_acquisition` stacks one acquisition into 4D magnitude and phase
(rad) arrays with a dcm2niix-identical affine (classic single-frame images and the frames of
enhanced multi-frame files alike, see :mod:`.enhanced`); :func:`dicom_to_bids` writes the BIDS dataset
atomically (built in a temporary folder next to ``bids_dir``, moved into place at the end).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from .. import __version__
from ..bids import check_label, dataset_description
from ..io import save_nifti, write_json
from . import enhanced, geometry, vendor
from .scan import PHILIPS_SCALE_SLOPE_TAG, DicomImage, _private, group_series, scan_folder

#: header fields written into every sidecar (``DicomSource``): UIDs and acquisition type only, so
#: that an export finds its study and frame of reference; nothing that identifies the patient
DICOM_SOURCE_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SeriesNumber",
                       "SeriesDescription", "ScanningSequence", "SequenceVariant", "MRAcquisitionType",
                       "PatientPosition")
#: patient and visit identification a PACS export needs (same patient, same study), as dcm2niix's
#: BIDS anonymisation drops them: never in the BIDS tree; read back from the source DICOMs at export
#: time, or kept in the private file of ``--keep-patient-info`` (:data:`PRIVATE_DIR`)
PATIENT_FIELDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                  "StudyTime", "AccessionNumber")
#: where ``keep_patient_info=True`` puts the patient identification (relative to the BIDS root; listed
#: in ``.bidsignore``): one ``sub-<l>[_ses-<s>]_dicomsource.json`` per subject/session
PRIVATE_DIR = Path("sourcedata") / "qsmflow-private"


@dataclass
class Acquisition:
    """One multi-echo GRE acquisition: the series that make it and how it is read."""

    series: list                # list of lists of DicomImage (1 or 2 series)
    kind: str                   # "magphase" | "complex"
    note: str = ""

    @property
    def images(self) -> list[DicomImage]:
        return [im for s in self.series for im in s]

    @property
    def label(self) -> str:
        return " + ".join(s[0].label for s in self.series)

    @property
    def vendor(self) -> str:
        return self.series[0][0].vendor


@dataclass
class Volumes:
    """An acquisition read into arrays (NIfTI layout, x × y × z × echo)."""

    magnitude: np.ndarray
    phase_rad: np.ndarray
    te_s: np.ndarray
    affine: np.ndarray
    sidecar: dict               # common to every echo file
    phase_sidecar: dict         # added to the phase files
    mag_sidecar: dict = field(default_factory=dict)


def _series_label(series) -> str:
    return series[0].label


def _skip_reason(series) -> str | None:
    im = series[0]
    if any(s.n_frames > 1 and s.frame is None for s in series):
        return ("multi-frame DICOM without functional groups (not Enhanced MR) is not supported: export "
                "classic or Enhanced MR DICOM from the scanner")
    if im.is_derived:
        return "derived images (ImageType DERIVED), not raw gradient-echo data"
    if not im.is_gre:
        seq = im.ds.get("ScanningSequence", "")
        return f"not a gradient-echo series (ScanningSequence {seq!s})"
    return None


def find_acquisitions(images) -> tuple[list[Acquisition], list[tuple[str, str]]]:
    """Pair series into GRE acquisitions → ``(acquisitions, [(series label, skip reason)])``.

    A series with real and imaginary (or magnitude and phase) images is one acquisition; a
    phase-only series is paired with a magnitude-only series of the same study, frame of reference
    and protocol (preferring the closest series number below it). Derived, non-GRE and unsupported
    multi-frame series are skipped.

    Parameters
    ----------
    images : iterable of DicomImage
        Headers from :func:`.scan.scan_folder`.

    Returns
    -------
    acquisitions : list of Acquisition
        Ordered by their lowest series number.
    skipped : list of tuple of str
        ``(series label, reason)`` for each series not used.

    Raises
    ------
    ValueError
        A series has real but no imaginary images, or imaginary but no real ones.
    """
    acqs, skipped = [], []
    mag_only, phase_only = [], []
    for series in group_series(images).values():
        reason = _skip_reason(series)
        if reason:
            skipped.append((_series_label(series), reason))
            continue
        parts = {im.part for im in series}
        if {"real", "imag"} <= parts:
            note = "real/imaginary images used"
            if parts & {"mag", "phase"}:
                note += " (magnitude/phase images in the series ignored)"
            acqs.append(Acquisition([series], "complex", note))
        elif parts & {"real", "imag"}:
            have, miss = ("real", "imaginary") if "real" in parts else ("imaginary", "real")
            raise ValueError(f"{_series_label(series)}: has {have} images but no {miss} images; "
                             "re-export the series with both")
        elif {"mag", "phase"} <= parts:
            acqs.append(Acquisition([series], "magphase"))
        elif parts == {"phase"}:
            phase_only.append(series)
        else:
            mag_only.append(series)
    used = set()
    for ph in phase_only:
        p0 = ph[0]
        cands = [m for m in mag_only if id(m) not in used
                 and m[0].ds.get("StudyInstanceUID") == p0.ds.get("StudyInstanceUID")
                 and m[0].ds.get("FrameOfReferenceUID") == p0.ds.get("FrameOfReferenceUID")
                 and m[0].protocol_name == p0.protocol_name]
        if not cands:
            skipped.append((_series_label(ph), "phase without a matching magnitude series "
                                               "(same study, frame of reference and protocol)"))
            continue
        # Siemens numbers the phase series right after its magnitude series
        best = min(cands, key=lambda m: (m[0].series_number > p0.series_number,
                                         abs(m[0].series_number - p0.series_number)))
        used.add(id(best))
        acqs.append(Acquisition([best, ph], "magphase"))
    for m in mag_only:
        if id(m) not in used:
            skipped.append((_series_label(m), "magnitude only: no phase (or real/imaginary) images found"))
    acqs.sort(key=lambda a: min(s[0].series_number for s in a.series))
    return acqs, skipped


# --------------------------------------------------------------------------------------------
# stacking one acquisition
# --------------------------------------------------------------------------------------------
def _check_headers(acq: Acquisition) -> None:
    """Same matrix, orientation and pixel spacing everywhere; position and (enhanced) TE present."""
    for series in acq.series:
        sizes = {}
        for im in series:
            sizes.setdefault((im.rows, im.columns), []).append(im)
        if len(sizes) > 1:
            desc = ", ".join(f"{r}x{c} in {len(v)} file(s)" for (r, c), v in sizes.items())
            raise ValueError(f"{series[0].label}: mixed matrix sizes in one series ({desc}); "
                             "remove the stray files or export the series again")
    ref = acq.images[0]
    for im in acq.images:
        if not np.all(np.isfinite(im.position)) or not np.all(np.isfinite(im.orientation)):
            raise ValueError(f"{im.label}: {im.source} has no ImagePositionPatient/"
                             "ImageOrientationPatient; cannot place it in space")
        if im.frame is not None and im.echo_time_ms is None:
            raise ValueError(f"{im.label}: {im.source} has no echo time (MREchoSequence EffectiveEchoTime "
                             "in the functional groups); cannot tell the echoes apart, export the series again")
        if (im.rows, im.columns) != (ref.rows, ref.columns):
            raise ValueError(f"{acq.label}: magnitude and phase have different matrix sizes "
                             f"({ref.rows}x{ref.columns} vs {im.rows}x{im.columns}); they cannot be paired")
        if not np.allclose(im.orientation, ref.orientation, atol=1e-4) or \
                not np.allclose(im.pixel_spacing, ref.pixel_spacing, atol=1e-4):
            raise ValueError(f"{im.label}: mixed slice orientations or pixel spacings in one acquisition "
                             f"({im.source}); split the series or remove the stray files")


def _group_echoes(imgs: list[DicomImage], label: str, echo_times_ms) -> tuple[list[list], list[float], str]:
    """Images of one part → (one list per echo, echo times in ms, how echoes were told apart)."""
    normal = geometry.slice_normal(imgs[0].orientation)
    by_pos: dict[float, list] = {}
    for im in imgs:
        by_pos.setdefault(round(float(im.position @ normal), 2), []).append(im)
    keys = sorted({(im.echo_time_ms or 0.0, im.echo_number or 0) for im in imgs})
    counts = {len(v) for v in by_pos.values()}
    n_echo = max(counts)
    if len(keys) >= n_echo:
        echoes = [[im for im in imgs if (im.echo_time_ms or 0.0, im.echo_number or 0) == k] for k in keys]
        tes = [k[0] for k in keys]
        how = "EchoTime/EchoNumbers"
    else:
        # EchoNumbers/EchoTime repeated (GE research export): order images at one slice position
        if len(counts) > 1:
            raise ValueError(f"{label}: echoes share EchoNumbers/EchoTime and slice positions hold "
                             f"{sorted(counts)} images; a slice is missing, re-export the complete series")
        echoes = [[] for _ in range(n_echo)]
        for pos_imgs in by_pos.values():
            for e, im in enumerate(sorted(pos_imgs, key=lambda i: i.order_key)):
                echoes[e].append(im)
        tes = [float(np.median([im.echo_time_ms or 0.0 for im in ech])) for ech in echoes]
        how = ("acquisition order (EchoNumbers/EchoTime repeated in the headers: GE raw data run number, "
               "then SOPInstanceUID order)")
        if echo_times_ms is None and len(set(tes)) < n_echo:
            raise ValueError(f"{label}: {n_echo} echoes all report EchoTime {tes[0]:g} ms (GE research "
                             "export); pass the echo times, e.g. --echo-times 3,6,9 (ms)")
    if echo_times_ms is not None:
        if len(echo_times_ms) != len(echoes):
            raise ValueError(f"{label}: {len(echoes)} echoes found but {len(echo_times_ms)} echo times "
                             "given; pass one echo time per echo (ms)")
        tes = [float(t) for t in echo_times_ms]
        how += "; echo times given by the user"
    return echoes, tes, how


def _sorted_echo(echo_imgs, label) -> tuple[list, np.ndarray, float]:
    ori = echo_imgs[0].orientation
    order, dist = geometry.order_slices(np.stack([im.position for im in echo_imgs]), ori)
    st = echo_imgs[0].ds.get("SpacingBetweenSlices") or echo_imgs[0].ds.get("SliceThickness")
    step = geometry.check_slice_spacing(dist, label, float(st) if st else None)
    return [echo_imgs[i] for i in order], dist, step


def _read_pixels(imgs, bar=None, cache=None) -> np.ndarray:
    """Pixel data of sorted images → (columns, reversed rows, slices) display values.

    ``cache``: dict reused across calls so that an enhanced file is decoded once."""
    cache = {} if cache is None else cache
    planes = []
    for im in imgs:
        stored = (pydicom.dcmread(str(im.path)).pixel_array if im.frame is None
                  else enhanced.frame_pixels(im.path, im.frame, cache))
        planes.append(geometry.pixels_to_nifti(vendor.rescale(stored, im.ds)))
        if bar is not None:
            bar.update()
    return np.stack(planes, axis=-1)


def load_acquisition(acq: Acquisition, echo_times_ms=None, progress: bool = False) -> Volumes:
    """Stack one acquisition → :class:`Volumes` (magnitude, phase in rad, TE in s, affine).

    Parameters
    ----------
    acq : Acquisition
        From :func:`find_acquisitions`.
    echo_times_ms : sequence of float, optional
        Echo times (ms), one per echo in echo order, replacing the headers' (needed when a GE
        research export gives every echo the same EchoTime).
    progress : bool, optional
        Show a progress bar while reading pixels.

    Returns
    -------
    Volumes
        ``magnitude`` and ``phase_rad`` float32 arrays (x, y, z, echo) in NIfTI layout, echoes by
        increasing ``te_s`` (s); the dcm2niix-identical RAS+ ``affine`` (mm); the sidecar fields.

    Raises
    ------
    ValueError
        Inconsistent headers (matrix, orientation, pixel spacing, no position or enhanced echo time),
        missing, duplicate or irregular slices, an echo without its magnitude/phase (or real/imaginary)
        partner, the wrong number of ``echo_times_ms``, or echo times missing or zero.
    """
    _check_headers(acq)
    parts = ("real", "imag") if acq.kind == "complex" else ("mag", "phase")
    grouped = {}
    for part in parts:
        imgs = [im for im in acq.images if im.part == part]
        lab = f"{imgs[0].label} ({part})"
        grouped[part] = _group_echoes(imgs, lab, echo_times_ms)
    (_, te0, how0), (_, te1, _) = grouped[parts[0]], grouped[parts[1]]
    names = {"mag": "magnitude", "phase": "phase", "real": "real", "imag": "imaginary"}
    set0, set1 = {round(t, 4) for t in te0}, {round(t, 4) for t in te1}
    for t in sorted(set0 ^ set1):
        have, miss = (parts[0], parts[1]) if t in set0 else (parts[1], parts[0])
        raise ValueError(f"{acq.label}: echo {sorted(set0 | set1).index(t) + 1} (TE {t:g} ms) has "
                         f"{names[have]} images but no {names[miss]} images; re-export the "
                         f"{names[miss]} series complete")
    from tqdm.auto import tqdm

    n_images = sum(len(e) for echoes, _, _ in grouped.values() for e in echoes)
    bar = tqdm(total=n_images, desc="reading pixels", unit="image", disable=not progress)
    ref_dist = None
    stacks, cache = {}, {}
    for part, (echoes, tes, _) in grouped.items():
        order = np.argsort(tes)
        vols = []
        for e in order:
            lab = f"{echoes[e][0].label} ({part}, echo {e + 1}, TE {tes[e]:g} ms)"
            imgs, dist, step = _sorted_echo(echoes[e], lab)
            if ref_dist is None:
                ref_dist, ref_imgs, ref_step = dist, imgs, step
            elif dist.shape != ref_dist.shape or not np.allclose(dist, ref_dist, atol=1e-2):
                raise ValueError(f"{lab}: {dist.size} slices where the first echo has {ref_dist.size} "
                                 "(or at other positions); a slice is missing, re-export the series")
            vols.append(_read_pixels(imgs, bar, cache))
        stacks[part] = np.stack(vols, axis=-1)
    bar.close()
    tes_ms = np.sort(np.asarray(te0, float))
    if np.any(tes_ms <= 0):
        raise ValueError(f"{acq.label}: EchoTime missing or zero in the headers; pass --echo-times (ms)")
    first = ref_imgs[0]
    n = len(ref_imgs)
    step_vec = ((ref_imgs[-1].position - first.position) / (n - 1) if n > 1
                else geometry.slice_normal(first.orientation) * ref_step)
    affine = geometry.affine_from_dicom(first.orientation, first.position, first.pixel_spacing,
                                        step_vec, first.rows)
    if _is_3d(first):
        for part in stacks:
            stacks[part], new_affine = geometry.to_closest_canonical(stacks[part], affine)
        affine = new_affine
    v = acq.vendor
    if acq.kind == "complex":
        mag, phase, rec = vendor.complex_to_mag_phase(stacks["real"], stacks["imag"], v)
        rec["Source"] = "real and imaginary images"
    else:
        mag = stacks["mag"]
        phase_hdr = next(im for im in acq.images if im.part == "phase").ds
        phase, rec = vendor.phase_to_rad(stacks["phase"], phase_hdr, v)
        rec["Source"] = "phase images"
    flipped = v in vendor.SIGN_FLIPPED_VENDORS
    rec["EchoOrderFrom"] = how0
    common = _common_sidecar(acq)
    phase_sc = {"Units": "rad", "PhaseScaling": rec, "PhaseSignFlipped": flipped}
    if flipped:
        phase_sc["PhaseSignNote"] = (f"{acq.series[0][0].manufacturer} phase has the opposite sign; negated "
                                     "so that a positive frequency offset gives a positive phase")
    if acq.note:
        phase_sc["ConversionNote"] = acq.note
    mag_sc = {}
    if v == "philips":
        mds = next(im for im in acq.images if im.part in ("mag", "real")).ds
        s, i = vendor.rescale_params(mds)
        mag_sc = {"MagnitudeScaling": {"RescaleSlope": s, "RescaleIntercept": i,
                                       "Method": "display value (slope/intercept applied)"}}
        ss = _private(mds, PHILIPS_SCALE_SLOPE_TAG)
        if ss is not None:
            mag_sc["MagnitudeScaling"]["PhilipsScaleSlope"] = float(ss)
    return Volumes(mag.astype(np.float32), phase.astype(np.float32), tes_ms / 1000.0, affine,
                   common, phase_sc, mag_sc)


def _num(ds, key, scale=1.0):
    v = ds.get(key)
    try:
        return None if v in (None, "") else float(v) * scale
    except (TypeError, ValueError):
        return None


def _common_sidecar(acq: Acquisition) -> dict:
    ds = acq.series[0][0].ds
    sc = {
        "Modality": "MR",
        "Manufacturer": acq.series[0][0].manufacturer,
        "ManufacturersModelName": str(ds.get("ManufacturerModelName", "") or ""),
        "MagneticFieldStrength": _num(ds, "MagneticFieldStrength"),
        "ImagingFrequency": _num(ds, "ImagingFrequency"),
        "RepetitionTime": _num(ds, "RepetitionTime", 1e-3),
        "FlipAngle": _num(ds, "FlipAngle"),
        "SliceThickness": _num(ds, "SliceThickness"),
        "MRAcquisitionType": str(ds.get("MRAcquisitionType", "") or ""),
        "SeriesDescription": acq.series[0][0].series_description,
        "ProtocolName": acq.series[0][0].protocol_name,
        "SeriesNumber": acq.series[0][0].series_number,
        "ConversionSoftware": "qsmflow dicom2bids",
        "ConversionSoftwareVersion": __version__,
    }
    sc = {k: v for k, v in sc.items() if v not in (None, "")}
    if sc.get("MagneticFieldStrength") and sc["MagneticFieldStrength"] > 100:  # stored in gauss
        sc["MagneticFieldStrength"] /= 1e4
    if "MagneticFieldStrength" not in sc and sc.get("ImagingFrequency"):
        sc["MagneticFieldStrength"] = round(sc["ImagingFrequency"] / 42.57747892, 2)
    return sc


def dicom_source(ds, patient: bool = False) -> dict:
    """Header fields a DICOM export needs: :data:`DICOM_SOURCE_FIELDS` (UIDs, acquisition type)
    and, if ``patient``, :data:`PATIENT_FIELDS` (then ``PatientID`` is always present, "" when the
    header has none).

    Parameters
    ----------
    ds : pydicom.Dataset
        A header of the source series.
    patient : bool, optional
        Include the patient and visit identification.

    Returns
    -------
    dict
        ``{keyword: value}``: strings (multi-valued ones joined with a backslash), ``SeriesNumber`` an
        int; absent or empty fields are left out.
    """
    keys = DICOM_SOURCE_FIELDS + (PATIENT_FIELDS if patient else ())
    out = {"PatientID": ""} if patient else {}
    for k in keys:
        v = ds.get(k)
        if v in (None, ""):
            continue
        out[k] = (int(v) if k == "SeriesNumber" else
                  "\\".join(map(str, v)) if isinstance(v, pydicom.multival.MultiValue) else str(v))
    return out


def _private_records(acqs) -> dict:
    """SeriesInstanceUID → source record with patient identification, for every series used."""
    return {str(s[0].series_uid): dicom_source(s[0].ds, patient=True) for a in acqs for s in a.series}


def private_path(root, name: str) -> Path:
    """The opt-in patient file of ``sub-<l>[_ses-<s>]`` (``name``) in the BIDS dataset ``root``.

    Parameters
    ----------
    root : str or path-like
        BIDS dataset root.
    name : str
        ``sub-<label>[_ses-<label>]``.

    Returns
    -------
    pathlib.Path
        ``root/sourcedata/qsmflow-private/<name>_dicomsource.json`` (:data:`PRIVATE_DIR`).
    """
    return Path(root) / PRIVATE_DIR / f"{name}_dicomsource.json"


def _write_private(root: Path, name: str, records: dict) -> Path:
    """The opt-in patient file under ``root/PRIVATE_DIR`` (group-readable at most) + .bidsignore."""
    path = private_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, records)
    os.chmod(path, 0o660 & ~_umask())
    ignore = root / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if f"{PRIVATE_DIR.as_posix()}/" not in lines:
        _atomic_text(ignore, "\n".join(lines + [f"{PRIVATE_DIR.as_posix()}/"]) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# BIDS writing
# --------------------------------------------------------------------------------------------


def _prefix(subject, session, run):
    p = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return p + (f"_run-{run}" if run else "")


def _write_dataset_files(root: Path, subject: str) -> None:
    root = Path(root)
    if not (root / "dataset_description.json").exists():
        write_json(root / "dataset_description.json", dataset_description(
            "qsmflow dicom2bids conversion", "raw",
            generated_by=[{"Name": "qsmflow dicom2bids", "Version": __version__}]))
    if not (root / "README").exists():
        _atomic_text(root / "README", "Multi-echo gradient-echo data converted from DICOM with "
                                      "`qsmflow dicom2bids`.\n")
    tsv = root / "participants.tsv"
    rows = tsv.read_text().splitlines() if tsv.exists() else ["participant_id"]
    if not any(r.split("\t")[0] == f"sub-{subject}" for r in rows[1:]):
        width = len(rows[0].split("\t"))
        rows.append("\t".join([f"sub-{subject}"] + ["n/a"] * (width - 1)))
        _atomic_text(tsv, "\n".join(rows) + "\n")
    os.chmod(root / "dataset_description.json", 0o666 & ~_umask())


def _make_readable(folder: Path) -> None:
    """Atomic writers create private (0600) temp files; give the dataset normal permissions."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _header():
    hdr = nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    return hdr


def write_acquisition(vols: Volumes, anat_dir: Path, prefix: str, source: dict | None) -> list[Path]:
    """Write one acquisition's echoes as ``<prefix>_echo-N_part-{mag,phase}_MEGRE.nii.gz``.

    Each float32 NIfTI gets a JSON sidecar: ``vols.sidecar`` plus ``EchoTime`` (s), ``EchoNumber``
    (1-based), ``DicomSource`` and the part's own fields (``Units`` arbitrary for the magnitude).

    Parameters
    ----------
    vols : Volumes
        From :func:`load_acquisition`.
    anat_dir : pathlib.Path
        Output folder (created if missing).
    prefix : str
        File name prefix, ``sub-<l>[_ses-<s>][_run-<n>]``.
    source : dict or None
        The ``DicomSource`` block (:func:`dicom_source`); None or empty to leave it out.

    Returns
    -------
    list of pathlib.Path
        The NIfTI files written (per echo: magnitude, then phase).
    """
    out = []
    for e, te in enumerate(vols.te_s):
        base = {**vols.sidecar, "EchoTime": round(float(te), 8), "EchoNumber": e + 1}
        if source:
            base["DicomSource"] = source
        for part, data, extra in (("mag", vols.magnitude, vols.mag_sidecar),
                                  ("phase", vols.phase_rad, vols.phase_sidecar)):
            p = anat_dir / f"{prefix}_echo-{e + 1}_part-{part}_MEGRE.nii.gz"
            sc = {**base, **extra}
            if part == "mag":
                sc["Units"] = "arbitrary"
            out.append(save_nifti(p, data[..., e], vols.affine, header=_header(), sidecar=sc,
                                  dtype=np.float32))
    return out


def dicom_to_bids(dicom_dir, bids_dir, subject, session=None, *, echo_times_ms=None,
                  keep_patient_info: bool = False, progress: bool = True, log=print) -> dict:
    """Convert the GRE acquisitions in ``dicom_dir`` into BIDS raw data under ``bids_dir``.

    No file of the BIDS tree holds patient identification (:data:`PATIENT_FIELDS`); with
    ``keep_patient_info`` it goes into ``bids_dir/sourcedata/qsmflow-private/`` (``.bidsignore``d,
    readable by owner and group at most) for a later ``--dicom-out`` without the DICOM folder.
    ``dicom_dir`` is only read. Several acquisitions get ``run-<n>`` in series-number order.

    Parameters
    ----------
    dicom_dir : str or path-like
        Folder of the scanner's DICOM files (searched recursively).
    bids_dir : str or path-like
        BIDS dataset root; created if missing, else the subject/session is added to it.
    subject : str
        Subject label (with or without ``sub-``).
    session : str, optional
        Session label (with or without ``ses-``); None for no session level.
    echo_times_ms : sequence of float, optional
        Echo times (ms) replacing the headers' (:func:`load_acquisition`).
    keep_patient_info : bool, optional
        Keep the patient identification in the private file (see above).
    progress : bool, optional
        Show progress bars.
    log : callable, optional
        Called with one message string per skipped series, converted acquisition and private file.

    Returns
    -------
    dict
        ``files`` (written NIfTI paths), ``acquisitions`` (labels), ``skipped`` ((series label, reason)
        pairs), ``non_dicom_files`` (paths, as str, of files that are not DICOM images), ``private``
        (the patient file or ``None``).

    Raises
    ------
    ValueError
        A label is not a BIDS label, ``sub-<subject>[/ses-<session>]`` already exists, no DICOM image
        or no multi-echo GRE series with phase is found, or a series cannot be converted (the message
        names the series and the problem); then nothing is left in ``bids_dir``.
    """
    subject = check_label(subject, "--subject")
    session = check_label(session, "--session") if session else None
    bids_dir = Path(bids_dir).absolute()
    sub_rel = Path(f"sub-{subject}") / (f"ses-{session}" if session else "")
    if (bids_dir / sub_rel).exists():
        raise ValueError(f"{bids_dir / sub_rel} already exists: remove it or choose another "
                         "--subject/--session")
    images, bad_files = scan_folder(dicom_dir, progress=progress)
    if not images:
        raise ValueError(f"{dicom_dir}: no DICOM images found ({len(bad_files)} other files)")
    acqs, skipped = find_acquisitions(images)
    for lab, why in skipped:
        log(f"skipped {lab}: {why}")
    if not acqs:
        listed = "; ".join(f"{lab} ({why})" for lab, why in skipped) or "none"
        raise ValueError(f"{dicom_dir}: no multi-echo gradient-echo series with phase found; "
                         f"series: {listed}")
    bids_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qsmflow-dicom2bids-", dir=bids_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; it becomes BIDS_DIR
        anat = tmp / sub_rel / "anat"
        anat.mkdir(parents=True)
        written = []
        for i, acq in enumerate(acqs):
            vols = load_acquisition(acq, echo_times_ms=echo_times_ms, progress=progress)
            run = i + 1 if len(acqs) > 1 else None
            src = dicom_source(acq.series[0][0].ds)
            written += write_acquisition(vols, anat, _prefix(subject, session, run), src)
            log(f"converted {acq.label}: {vols.magnitude.shape[:3]} x {len(vols.te_s)} echoes, "
                f"TE {', '.join(f'{t * 1e3:g}' for t in vols.te_s)} ms")
        private_name = _prefix(subject, session, None)
        if not bids_dir.exists():
            _write_dataset_files(tmp, subject)
            _make_readable(tmp)
            if keep_patient_info:
                _write_private(tmp, private_name, _private_records(acqs))
            os.rename(tmp, bids_dir)
        else:
            target = bids_dir / sub_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _make_readable(tmp)
            os.rename(tmp / sub_rel, target)
            _write_dataset_files(bids_dir, subject)
            if keep_patient_info:
                _write_private(bids_dir, private_name, _private_records(acqs))
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    private = private_path(bids_dir, private_name) if keep_patient_info else None
    if private is not None:
        log(f"patient identification kept in {private} (do not share sourcedata/)")
    final = [bids_dir / Path(p).relative_to(tmp) for p in written]
    return {"files": final, "acquisitions": [a.label for a in acqs], "skipped": skipped,
            "non_dicom_files": [str(f) for f in bad_files], "private": private}


def read_series_volume(images, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stack one single-echo series (e.g. an exported χ map) → ``(data, affine)`` with display
    values (rescale applied) and the dcm2niix-layout affine.

    Parameters
    ----------
    images : iterable of DicomImage
        The images of one series, one per slice.
    progress : bool, optional
        Show a progress bar while reading pixels.

    Returns
    -------
    data : numpy.ndarray, shape (x, y, z)
        Display values, float64, NIfTI layout (a 3D acquisition rotated to the closest RAS+ order).
    affine : numpy.ndarray, shape (4, 4)
        NIfTI RAS+ affine (mm).

    Raises
    ------
    ValueError
        Images of several series, or slices duplicated, missing or irregularly spaced.
    """
    images = list(images)
    label = images[0].label
    if len({im.series_uid for im in images}) > 1:
        raise ValueError(f"{label}: images of several series given; pass one series")
    imgs, _, step = _sorted_echo(images, label)
    first, n = imgs[0], len(imgs)
    step_vec = ((imgs[-1].position - first.position) / (n - 1) if n > 1
                else geometry.slice_normal(first.orientation) * step)
    affine = geometry.affine_from_dicom(first.orientation, first.position, first.pixel_spacing,
                                        step_vec, first.rows)
    from tqdm.auto import tqdm

    with tqdm(total=len(imgs), desc="reading pixels", unit="image", disable=not progress) as bar:
        data = _read_pixels(imgs, bar)
    return geometry.to_closest_canonical(data, affine) if _is_3d(first) else (data, affine)


def _is_3d(im: DicomImage) -> bool:
    """dcm2niix rotates 3D acquisitions to the closest canonical orientation; so do we."""
    return str(im.ds.get("MRAcquisitionType", "")).upper() == "3D"
