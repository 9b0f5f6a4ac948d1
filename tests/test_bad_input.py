"""The bad-input matrix of the BIDS App: what real data and real users do to it.

Each bad case takes a small valid dataset, breaks one thing, runs ``qsmflow`` as a user would and
requires: a non-zero exit without a Python traceback; one stderr line that names the offending
file (or option) and says what to do; no derivatives written (no image, no ``sub-*`` folder); and
the input dataset byte-identical afterwards (sha256 and mode of every file and folder).

The cases that must simply work (single echo, no magnitude, 4D echoes, odd matrix, oblique, several
runs) run the whole pipeline and check the χ maps against the simulation's ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _robustness import app_cmd, app_env, run_app, run_app_inprocess, tree_fingerprint

TE = (0.004, 0.008, 0.012)
SHAPE = (24, 30, 24)          # 8 mm voxels: a whole (coarse) head in a tiny matrix
VOXEL = (8.0, 8.0, 8.0)
ANAT = "sub-01/anat"


def _p(root: Path, echo: int, part: str, ext=".nii.gz", prefix="sub-01") -> Path:
    return root / ANAT / f"{prefix}_echo-{echo}_part-{part}_MEGRE{ext}"


def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d, indent=2))


def _rewrite(path: Path, fn, dtype=None) -> None:
    img = nib.load(path)
    data = fn(np.asarray(img.dataobj))
    new = nib.Nifti1Image(np.asarray(data), img.affine)
    if dtype is not None:
        new.set_data_dtype(dtype)
    nib.save(new, path)


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory) -> Path:
    from qsmflow.sims.megre import write_bids_dataset

    root = tmp_path_factory.mktemp("base") / "bids"
    write_bids_dataset(root, subjects=("01",), shape=SHAPE, voxel_size=VOXEL, te_s=TE, seed=1)
    return root


@dataclass
class Ctx:
    """One run: where the dataset, output and work folders are, and the App's extra options."""

    tmp: Path
    bids: Path
    out: Path
    work: Path
    extra: list = field(default_factory=list)
    label: str = "01"
    wrap: list | None = None            # command prefix (e.g. a read-only mount namespace)

    def args(self):
        a = [self.bids, self.out, "participant", "-w", self.work, "--skip-bids-validation",
             "--inversion", "tkd"]
        if self.label is not None:
            a += ["--participant-label", self.label]
        return a + self.extra


# --- the breakers: each damages ctx and returns the fragments the error line must contain ---
def missing_echotime(c):
    _edit_json(_p(c.bids, 2, "phase", ".json"), lambda d: d.pop("EchoTime"))
    return ["sub-01_echo-2_part-phase_MEGRE", "EchoTime"]


def echotime_in_ms(c):
    for e, t in enumerate(TE, 1):
        for part in ("mag", "phase"):
            _edit_json(_p(c.bids, e, part, ".json"), lambda d, t=t: d.update(EchoTime=t * 1000))
    return ["part-phase_MEGRE", "seconds"]


def no_field_strength(c):
    for e in range(1, 4):
        for part in ("mag", "phase"):
            _edit_json(_p(c.bids, e, part, ".json"), lambda d: d.pop("MagneticFieldStrength"))
    return ["part-phase_MEGRE", "MagneticFieldStrength"]


def field_strength_with_unit(c):
    for e in range(1, 4):
        for part in ("mag", "phase"):
            _edit_json(_p(c.bids, e, part, ".json"),
                       lambda d: d.update(MagneticFieldStrength="3T"))
    return ["part-phase_MEGRE", "MagneticFieldStrength"]


def mag_phase_shape_mismatch(c):
    _rewrite(_p(c.bids, 1, "mag"), lambda a: a[:-2])
    return ["sub-01_echo-1_part-mag_MEGRE", "shape"]


def echo_shapes_differ(c):
    for part in ("mag", "phase"):
        _rewrite(_p(c.bids, 3, part), lambda a: a[:, :, :-1])
    return ["sub-01_echo-3_part-", "shape"]


def echo_count_differs(c):
    for ext in (".nii.gz", ".json"):
        _p(c.bids, 3, "mag", ext).unlink()
    return ["sub-01_echo-3_part-phase_MEGRE", "mag"]


def nan_phase(c):
    def f(a):
        a = a.astype(np.float32)
        a[10:12, 10:12, 10:12] = np.nan
        return a
    _rewrite(_p(c.bids, 2, "phase"), f)
    return ["sub-01_echo-2_part-phase_MEGRE", "NaN"]


def inf_phase(c):
    def f(a):
        a = a.astype(np.float32)
        a[5, 5, 5] = np.inf
        return a
    _rewrite(_p(c.bids, 1, "phase"), f)
    return ["sub-01_echo-1_part-phase_MEGRE", "Inf"]


def integer_phase_without_units(c):
    for e in range(1, 4):
        _rewrite(_p(c.bids, e, "phase"), lambda a: np.round(a / np.pi * 32767).astype(np.int16),
                 dtype=np.int16)
        _edit_json(_p(c.bids, e, "phase", ".json"), lambda d: d.pop("Units", None))
    return ["part-phase_MEGRE", "Units"]


def unknown_phase_units(c):
    for e in range(1, 4):
        _edit_json(_p(c.bids, e, "phase", ".json"), lambda d: d.update(Units="degrees"))
    return ["part-phase_MEGRE", "Units"]


def two_d_data(c):
    for e in range(1, 4):
        for part in ("mag", "phase"):
            _rewrite(_p(c.bids, e, part), lambda a: a[:, :, 12:13])
    return ["part-", "3D"]


def truncated_nifti(c):
    p = _p(c.bids, 2, "phase")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return ["sub-01_echo-2_part-phase_MEGRE", "NIfTI"]


def corrupt_nifti(c):
    _p(c.bids, 1, "mag").write_bytes(b"this is not a NIfTI file\n" * 40)
    return ["sub-01_echo-1_part-mag_MEGRE", "NIfTI"]


def empty_brain_mask(c):
    for e in range(1, 4):
        _rewrite(_p(c.bids, e, "mag"), lambda a: np.zeros_like(a))
    return ["mask"]


def unknown_inversion(c):
    c.extra += ["--inversion", "notamethod"]
    return ["--inversion", "notamethod"]


def unknown_bgremoval(c):
    c.extra += ["--bgremoval", "magic"]
    return ["--bgremoval", "magic"]


def label_with_path_characters(c):
    c.label = "../x"
    return ["../x", "label"]


def unknown_participant(c):
    c.label = "99"
    return ["sub-99"]


def unknown_session(c):
    c.extra += ["--session-label", "7"]
    return ["ses-7"]


def output_inside_input(c):
    c.out = c.bids / "derivatives" / "qsmflow"
    return ["inside the input"]


def work_inside_input(c):
    c.work = c.bids / "work"
    return ["inside the input"]


def output_is_input(c):
    c.out = c.bids
    return ["inside the input"]


def _read_only(c, folder: Path):
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root ignores permission bits: use a read-only bind mount in a private namespace
        if not shutil.which("unshare"):
            pytest.skip("root without unshare: cannot make a read-only folder")
        c.wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
                  "sh", str(folder)]


def read_only_output(c):
    _read_only(c, c.out)
    return [c.out.name, "writ"]


def read_only_work(c):
    _read_only(c, c.work)
    return [c.work.name, "writ"]


def full_disk(c):
    """The output folder on a 64 kB file system (a tmpfs in a private mount namespace)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a tiny file system")
    c.out.mkdir(parents=True)
    c.wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o size=64k tmpfs "$1" && shift && exec "$@"', "sh", str(c.out)]
    return [c.out.name, "MB free"]


def output_locked(c):
    """Another live qsmflow run (here: PID 1, always alive) holds the output folder."""
    import socket

    c.out.mkdir(parents=True)
    (c.out / ".qsmflow.lock").write_text(json.dumps(
        {"pid": 1, "host": socket.gethostname(), "started": "2025-01-01 12:00:00"}))
    return [c.out.name, "another qsmflow run (PID 1", ".qsmflow.lock"]


def truncated_uncompressed_nifti(c):
    gz = _p(c.bids, 2, "phase")
    nii = _p(c.bids, 2, "phase", ".nii")
    nib.save(nib.load(gz), nii)
    gz.unlink()
    raw = nii.read_bytes()
    nii.write_bytes(raw[: int(len(raw) * 0.7)])
    return ["sub-01_echo-2_part-phase_MEGRE.nii", "truncated"]


def affine_differs(c):
    p = _p(c.bids, 2, "phase")
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 2.0                                   # shifted by 2 mm
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    return ["sub-01_echo-2_part-phase_MEGRE", "affine", "mm"]


def magnitude_echo_time_differs(c):
    _edit_json(_p(c.bids, 2, "mag", ".json"), lambda d: d.update(EchoTime=0.010))
    return ["sub-01_echo-2_part-mag_MEGRE", "EchoTime"]


def not_a_bids_dataset(c):
    (c.bids / "dataset_description.json").unlink()
    return ["dataset_description.json"]


def input_does_not_exist(c):
    c.bids = c.tmp / "nowhere"
    return ["nowhere", "BIDS"]


def no_phase_images(c):
    for e in range(1, 4):
        for ext in (".nii.gz", ".json"):
            _p(c.bids, e, "phase", ext).unlink()
    return ["phase"]


def echo_times_not_increasing(c):
    _edit_json(_p(c.bids, 3, "phase", ".json"), lambda d: d.update(EchoTime=TE[1]))
    return ["part-phase_MEGRE", "EchoTime"]


def bad_plugin_yaml(c):
    y = c.tmp / "plugin.yml"
    y.write_text("plugin: NoSuchPlugin\n")
    c.extra += ["--use-plugin", str(y)]
    return ["NoSuchPlugin"]


def missing_plugin_file(c):
    c.extra += ["--use-plugin", str(c.tmp / "absent.yml")]
    return ["absent.yml"]


def config_unknown_key(c):
    t = c.tmp / "run.toml"
    t.write_text('inversoin = ["tkd"]\n')
    c.extra += ["--config", str(t)]
    return ["run.toml", "inversoin"]


BAD = [missing_echotime, echotime_in_ms, no_field_strength, field_strength_with_unit,
       mag_phase_shape_mismatch, echo_shapes_differ, echo_count_differs, nan_phase, inf_phase,
       integer_phase_without_units, unknown_phase_units, two_d_data, truncated_nifti,
       corrupt_nifti, empty_brain_mask, unknown_inversion, unknown_bgremoval,
       label_with_path_characters, unknown_participant, unknown_session, output_inside_input,
       work_inside_input, output_is_input, read_only_output, read_only_work, full_disk,
       output_locked, truncated_uncompressed_nifti, affine_differs,
       magnitude_echo_time_differs, not_a_bids_dataset,
       input_does_not_exist, no_phase_images, echo_times_not_increasing, bad_plugin_yaml,
       missing_plugin_file, config_unknown_key]


def _no_derivatives(out: Path) -> list[str]:
    """Derivative files a failed run left behind (images, subject folders, reports)."""
    if not out.exists():
        return []
    left = [str(p.relative_to(out)) for p in out.rglob("*")
            if p.name.endswith((".nii", ".nii.gz", ".html", ".png")) or
            (p.is_dir() and p.name.startswith("sub-") and p.parent == out)]
    return sorted(left)


def _assert_fails_cleanly(c: Ctx, expect: list[str], before: dict):
    if c.wrap:  # needs its own process (a private mount namespace)
        r = subprocess.run(c.wrap + app_cmd(*c.args()), capture_output=True, text=True,
                           timeout=300, env=app_env(), stdin=subprocess.DEVNULL)
    else:
        r = run_app_inprocess(*c.args())
    err = r.stderr.strip()

    assert r.returncode not in (0, None) and r.returncode > 0, (
        f"exit {r.returncode}; expected a clean non-zero exit\n{r.stdout[-2000:]}\n{err[-2000:]}")
    assert "Traceback" not in err, f"a traceback instead of a message:\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if all(f in ln for f in expect)]
    assert lines, f"no stderr line names {expect}:\n{err[-3000:]}"
    assert r.returncode == 2, f"exit {r.returncode}: not refused up front\n{err[-2000:]}"
    last = err.splitlines()[-1]
    assert all(f in last for f in expect), f"the last line is not the human one: {last!r}"
    assert len(lines[0]) < 700, f"not a clear one-liner: {lines[0]!r}"
    left = [] if c.out.resolve() == c.bids.resolve() else _no_derivatives(c.out)
    assert not left, f"partial derivatives left behind: {left[:10]}"
    if before:
        assert tree_fingerprint(c.bids) == before, "the input dataset was modified"


@pytest.mark.parametrize("breaker", BAD, ids=[b.__name__ for b in BAD])
def test_bad_input_fails_cleanly(breaker, base_dataset, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(base_dataset, bids)
    c = Ctx(tmp=tmp_path, bids=bids, out=tmp_path / "out", work=tmp_path / "work")
    expect = breaker(c)
    before = tree_fingerprint(c.bids) if c.bids.exists() else {}
    try:
        _assert_fails_cleanly(c, expect, before)
    finally:
        for d in (c.out, c.work):
            if d.exists() and os.geteuid() != 0:
                d.chmod(0o755)


def test_real_phase_with_nan_fails_cleanly(shared_data, tmp_path):
    """Real scanner phase with 1,280 NaN voxels (shared/data/real-gre-small), wrapped as a 4D
    phase-only acquisition: refused with the file named, not processed into garbage."""
    src = shared_data / "real-gre-small" / "phase_with_nan.nii"
    bids = tmp_path / "bids"
    (bids / ANAT).mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "real phase with NaN", "BIDSVersion": "1.10.0"}))
    shutil.copy(src, bids / ANAT / "sub-01_part-phase_MEGRE.nii")
    (bids / ANAT / "sub-01_part-phase_MEGRE.json").write_text(json.dumps(
        {"EchoTime": [0.004, 0.008], "MagneticFieldStrength": 3.0, "Units": "rad"}))
    c = Ctx(tmp=tmp_path, bids=bids, out=tmp_path / "out", work=tmp_path / "work")
    _assert_fails_cleanly(c, ["sub-01_part-phase_MEGRE", "NaN"], tree_fingerprint(bids))


# --------------------------------------------------------------------------------------------
# cases that must simply work
# --------------------------------------------------------------------------------------------
def _corr_with_truth(out: Path, bids: Path, prefix: str, method="tkd") -> float:
    chi = nib.load(out / ANAT / f"{prefix}_desc-{method}_Chimap.nii.gz").get_fdata()
    mask = nib.load(out / ANAT / f"{prefix}_desc-brain_mask.nii.gz").get_fdata() > 0
    truth = nib.load(bids / "derivatives" / "qsmflow-truth" / ANAT /
                     f"{prefix}_desc-truth_Chimap.nii.gz").get_fdata()
    assert chi.shape == truth.shape and mask.sum() > 50
    assert np.isfinite(chi[mask]).all()
    return float(np.corrcoef(chi[mask], truth[mask])[0, 1])


def _write_4d(root: Path, src: Path, drop_magnitude: bool):
    for part in ("phase", "mag"):
        files = sorted((src / ANAT).glob(f"sub-01_echo-*_part-{part}_MEGRE.nii.gz"))
        if part == "mag" and drop_magnitude:
            continue
        imgs = [nib.load(f) for f in files]
        sides = [json.loads(Path(str(f).replace(".nii.gz", ".json")).read_text()) for f in files]
        data = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1)
        side = dict(sides[0])
        side["EchoTime"] = [s["EchoTime"] for s in sides]
        side.pop("EchoNumber", None)
        nib.save(nib.Nifti1Image(data, imgs[0].affine),
                 root / ANAT / f"sub-01_part-{part}_MEGRE.nii.gz")
        (root / ANAT / f"sub-01_part-{part}_MEGRE.json").write_text(json.dumps(side, indent=2))
    for f in (root / ANAT).glob("sub-01_echo-*"):
        f.unlink()


GOOD_SHAPE, GOOD_VOXEL = (40, 48, 40), (4.5, 4.5, 4.5)   # coarse but anatomically sensible
GOOD = {
    # name: (write_bids_dataset kwargs, post-processing, extra options, prefixes expected)
    "single_echo": (dict(te_s=(0.012,)), None, [], ["sub-01"]),
    # one 4D file per part is not BIDS (MEGRE requires echo-<n>) but common: skip the validator
    "no_magnitude_4d_echoes": (dict(), "4d_nomag", ["--skip-bids-validation"], ["sub-01"]),
    "odd_matrix_oblique_two_runs": (dict(shape=(41, 47, 39), oblique_deg=15.0, runs=("1", "2")),
                                    None, [], ["sub-01_run-1", "sub-01_run-2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GOOD))
def test_unusual_but_valid_input_works(case, tmp_path):
    from qsmflow.sims.megre import write_bids_dataset

    kw, post, extra, prefixes = GOOD[case]
    kw = {"subjects": ("01",), "shape": GOOD_SHAPE, "voxel_size": GOOD_VOXEL, "te_s": TE,
          "seed": 2, **kw}
    bids = tmp_path / "bids"
    write_bids_dataset(bids, **kw)
    if post == "4d_nomag":
        _write_4d(bids, bids, drop_magnitude=True)
    before = tree_fingerprint(bids)
    r = run_app(bids, tmp_path / "out", "participant", "--participant-label", "01",
                "-w", tmp_path / "work", "--inversion", "tkd", "--nprocs", "2", *extra, timeout=900)
    assert r.returncode == 0, f"{case} failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for prefix in prefixes:
        rho = _corr_with_truth(tmp_path / "out", bids, prefix)
        assert rho > 0.3, f"{case} {prefix}: χ correlates with the truth at r = {rho:.2f} only"
    if post == "4d_nomag":  # no magnitude: the mask came from the phase, and says so
        side = json.loads((tmp_path / "out" / ANAT / "sub-01_desc-brain_mask.json").read_text())
        assert side.get("Masking") == "phase-quality", side.get("Masking")
        assert not any("part-mag" in src for src in side.get("Sources", [])), side["Sources"]
    assert tree_fingerprint(bids) == before


def _warnings_of(fn) -> list[str]:
    """Messages qsmflow's logger emits while ``fn()`` runs (its handlers may not propagate)."""
    import logging

    msgs = []
    h = logging.Handler(logging.WARNING)
    h.emit = lambda rec: msgs.append(rec.getMessage())
    log = logging.getLogger("qsmflow")
    log.addHandler(h)
    try:
        fn()
    finally:
        log.removeHandler(h)
    return msgs


def test_missing_phase_echo_warns_and_uses_the_paired_echoes(base_dataset, tmp_path):
    """Echo-2 phase lost in conversion, its magnitude kept: a warning names the unpaired
    magnitude and the echoes used (1 and 3), and the run goes on with them."""
    from qsmflow.bids import collect_acquisitions

    bids = tmp_path / "bids"
    shutil.copytree(base_dataset, bids)
    for ext in (".nii.gz", ".json"):
        _p(bids, 2, "phase", ext).unlink()
    got = {}
    msgs = _warnings_of(lambda: got.update(collect_acquisitions(bids)))
    acq = got["01"][0]
    assert acq.echo_times == [TE[0], TE[2]]
    assert [Path(m).name for m in acq.magnitude] == [_p(bids, e, "mag").name for e in (1, 3)]
    hits = [m for m in msgs if "sub-01_echo-2_part-mag_MEGRE.nii.gz" in m and "2 echo" in m]
    assert hits and "4 ms, 12 ms" in hits[0], msgs


def test_concurrent_run_is_refused_and_the_lock_released(base_dataset, tmp_path):
    """A live lock refuses a second run (exit 2, the lock named); a stale one (dead PID) is
    taken over with a warning; a finished run leaves no lock behind."""
    import socket
    import subprocess as sp

    from qsmflow.cli import lock

    out = tmp_path / "out"
    out.mkdir()
    held = lock.acquire(out)
    assert json.loads(held.read_text())["pid"] == os.getpid()
    with pytest.raises(lock.LockError, match="another qsmflow run"):
        lock.acquire(out)
    lock.release(held)
    assert not held.exists()
    dead = sp.Popen(["true"])
    dead.wait()
    held.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    msgs = _warnings_of(lambda: lock.acquire(out))
    assert any("stale" in m for m in msgs), msgs
    lock.release(held)
    fresh = tmp_path / "fresh"  # a run refused after the lock: no lock, no folder left behind
    r = run_app_inprocess(base_dataset, fresh, "participant", "-w", tmp_path / "work",
                          "--skip-bids-validation", "--dicom-out", tmp_path / "dcm")
    assert r.returncode == 2 and "--source-dicom" in r.stderr.splitlines()[-1], r.stderr
    assert not fresh.exists() and not (tmp_path / "work").exists()
