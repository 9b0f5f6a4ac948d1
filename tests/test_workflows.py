"""Workflow construction on BIDS skeletons (the graph is built, never run)."""

from __future__ import annotations

import pytest

from bids_skeleton import make_skeleton
from qsmflow.bids import InputError, collect_acquisitions
from qsmflow.config import apply_resources
from qsmflow.workflows import init_qsm_wf, init_qsmflow_wf


def _build(root, tmp_path, subjects, inversions=("tkd", "medi"), **kw):
    return init_qsmflow_wf(subjects=subjects, bids_dir=root, output_dir=tmp_path / "out",
                           work_dir=tmp_path / "work", log_dir=tmp_path / "out" / "logs",
                           run_uuid="test", inversions=list(inversions), **kw)


def _node_names(wf):
    return set(wf.list_node_names())


def _edges(wf):
    """(source node, target node) name pairs of the flattened graph."""
    flat = wf._create_flat_graph()
    return {(u.fullname, v.fullname) for u, v in flat.edges()}


def test_multi_session_multi_run(tmp_path):
    root = make_skeleton(tmp_path / "ds", subjects=("01", "02"), sessions=("1", "2"),
                         runs=("1", "2"))
    subjects = collect_acquisitions(root, ["01"], ["2"])
    assert list(subjects) == ["01"]
    names = [a.name for a in subjects["01"]]
    assert names == ["sub-01_ses-2_run-1", "sub-01_ses-2_run-2"]
    wf = _build(root, tmp_path, subjects)
    nodes = _node_names(wf)
    for run in ("1", "2"):
        pre = f"single_subject_01_wf.qsm_ses_2_run_{run}_wf"
        for step in ("scale_phase", "brain_mask", "fit_field", "remove_background",
                     "invert_tkd", "invert_medi"):
            assert f"{pre}.{step}" in nodes
    # derivative names keep session and run, drop echo and part
    ds = [n for n in wf._get_all_nodes() if n.name == "ds_chimap"]
    rels = sorted(r[0] if isinstance(r, list) else r for n in ds for r in n.inputs.relpath)
    assert rels == sorted(f"sub-01/ses-2/anat/sub-01_ses-2_run-{r}_desc-{m}_Chimap.nii.gz"
                          for r in ("1", "2") for m in ("tkd", "medi"))
    # crash files of each subject go to the output's log folder
    for node in wf.get_node("single_subject_01_wf")._get_all_nodes():
        assert node.config["execution"]["crashdump_dir"].endswith("logs/sub-01/test")


def test_inversions_are_parallel_branches_of_one_local_field(tmp_path):
    root = make_skeleton(tmp_path / "ds")
    subjects = collect_acquisitions(root)
    wf = _build(root, tmp_path, subjects, inversions=("tkd", "tikhonov", "medi"))
    edges = _edges(wf)
    inv = [v for _, v in edges if v.split(".")[-1].startswith("invert_")]
    assert len(set(inv)) == 3
    for node in set(inv):
        srcs = {u.split(".")[-1] for u, v in edges if v == node}
        assert "remove_background" in srcs          # the same local field feeds every method
        assert not any(s.startswith("invert_") for s in srcs)  # no chain between inversions


def test_echo_order_comes_from_echo_time_not_file_names(tmp_path):
    root = make_skeleton(tmp_path / "ds", echoes=(0.012, 0.004, 0.008))
    acq = collect_acquisitions(root)["01"][0]
    assert acq.echo_times == [0.004, 0.008, 0.012]
    assert [p.split("_echo-")[1][0] for p in acq.phase] == ["2", "3", "1"]
    assert [p.split("_echo-")[1][0] for p in acq.magnitude] == ["2", "3", "1"]


def test_t2starw_single_echo(tmp_path):
    root = make_skeleton(tmp_path / "ds", suffix="T2starw", echoes=(0.02,), top_level_b0=True)
    acq = collect_acquisitions(root)["01"][0]
    assert acq.suffix == "T2starw" and acq.n_echoes == 1 and acq.b0_tesla == 3.0
    wf = _build(root, tmp_path, {"01": [acq]}, inversions=("tkd",))
    assert "single_subject_01_wf.qsm_main_wf.invert_tkd" in _node_names(wf)


def test_four_d_echoes_in_one_file(tmp_path):
    root = make_skeleton(tmp_path / "ds", echoes=(0.004, 0.008, 0.012), four_d=True)
    acq = collect_acquisitions(root)["01"][0]
    assert acq.n_echoes == 3 and len(acq.phase) == 1 and acq.shape == (6, 5, 4)


def test_missing_magnitude_uses_phase_quality_mask(tmp_path):
    root = make_skeleton(tmp_path / "ds", magnitude=False)
    acq = collect_acquisitions(root)["01"][0]
    assert acq.magnitude is None
    wf = _build(root, tmp_path, {"01": [acq]}, masking="magnitude")
    node = wf.get_node("single_subject_01_wf.qsm_main_wf.brain_mask")
    assert node.inputs.method == "phase-quality"
    edges = _edges(wf)
    # the mask is judged after the fit (its residual); the mask stands in for the magnitude
    assert any(u.endswith("fit_field") and v.endswith("brain_mask") for u, v in edges)
    ds_mag = wf.get_node("single_subject_01_wf.ds_main_wf.ds_magnitude")
    assert "No magnitude images were acquired" in ds_mag.inputs.sidecar["Description"]


def test_magnitude_mask_comes_before_the_fit(tmp_path):
    root = make_skeleton(tmp_path / "ds")
    wf = _build(root, tmp_path, collect_acquisitions(root))
    edges = _edges(wf)
    assert any(u.endswith("brain_mask") and v.endswith("fit_field") for u, v in edges)
    assert any(n.name == "ds_magnitude" for n in wf._get_all_nodes())


def test_methods_text_cites_only_methods_used():
    wf = init_qsm_wf(inversions=["tkd", "medi"], bgremoval="vsharp")
    assert "Liu J et al. MEDI" in wf.__desc__ and "V-SHARP" in wf.__desc__
    assert "FANSI" not in wf.__desc__ and "RESHARP" not in wf.__desc__


def test_node_resources_scale_and_become_scheduler_args(tmp_path):
    small = init_qsm_wf(inversions=["medi"], n_voxels=64**3, n_echoes=4)
    big = init_qsm_wf(inversions=["medi"], n_voxels=256 * 256 * 128, n_echoes=4)
    m_small = small.get_node("invert_medi").mem_gb
    m_big = big.get_node("invert_medi").mem_gb
    assert m_big > 8 * (m_small - 0.25)  # 32x the voxels → far more memory
    assert m_big > 2.0
    apply_resources(big, "SLURM", max_mem_gb=2.0, max_procs=2)
    node = big.get_node("invert_medi")
    assert node.mem_gb == 2.0  # clamped to what the run may use
    assert node.plugin_args["sbatch_args"] == f" --mem=2G --cpus-per-task={node.n_procs}"
    apply_resources(small, "SGE", max_mem_gb=64, max_procs=4)
    assert "-l h_vmem=" in small.get_node("fit_field").plugin_args["qsub_args"]


def test_every_inversion_gets_the_echo_times():
    """The nonlinear data terms take the acquisition's phase scale: the echo times reach every
    inversion node from the phase scaling step."""
    wf = init_qsm_wf(inversions=["medi", "fansi", "tkd"])
    src = wf.get_node("scale_phase")
    for method in ("medi", "fansi", "tkd"):
        edge = wf._graph.get_edge_data(src, wf.get_node(f"invert_{method}"))
        assert ("echo_times", "echo_times") in edge["connect"]


def test_unknown_session_and_participant_are_refused(tmp_path):
    root = make_skeleton(tmp_path / "ds", sessions=("1",))
    with pytest.raises(InputError, match="no participant sub-07"):
        collect_acquisitions(root, ["07"])
    with pytest.raises(InputError, match="no session ses-9"):
        collect_acquisitions(root, None, ["9"])


def test_derivative_names_keep_entities_and_fold_rec_in_fmap():
    from qsmflow.bids import derivative_relpath

    ent = {"sub": "01", "ses": "1", "acq": "fast", "rec": "mag", "run": "02"}
    assert str(derivative_relpath(ent, "chimap", desc="medi")) == (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_rec-mag_run-02_desc-medi_Chimap.nii.gz")
    assert str(derivative_relpath(ent, "local_field")) == (
        "sub-01/ses-1/fmap/sub-01_ses-1_acq-fastMag_run-02_desc-local_fieldmap.nii.gz")
    with pytest.raises(ValueError, match="letters and digits"):
        derivative_relpath({"sub": "01"}, "chimap", desc="../x")


def test_thread_counts_do_not_change_any_step_hash(tmp_path):
    """``--omp-nthreads`` sets how fast a step runs, not what it computes: every node hashes the
    same with 1 and 4 threads (so a cached run is reused), and the threads do reach the steps."""
    root = make_skeleton(tmp_path / "ds")
    subjects = collect_acquisitions(root)
    inv = ("tkd", "medi", "sstv")

    def hashes(n):
        wf = _build(root, tmp_path, subjects, inversions=inv, omp_nthreads=n)
        nodes = {nd.fullname: nd for nd in wf._get_all_nodes()}
        threaded = [nd for nd in nodes.values()
                    if "num_threads" in nd.inputs.copyable_trait_names()]
        assert len(threaded) >= 5 and all(nd.inputs.num_threads == n for nd in threaded)
        return {name: nd.inputs.get_hashval()[1] for name, nd in nodes.items()
                if name.split(".")[-1] != "inputnode"}

    one, four = hashes(1), hashes(4)
    assert one.keys() == four.keys() and one == four


def test_methods_text_for_every_acquisition_with_published_names(tmp_path):
    """Two runs acquired differently (2 and 1 echoes) each get their methods paragraph; the
    methods are spelled as published (iLSQR, MEDI, SS-TV, V-SHARP), not as option names."""
    root = make_skeleton(tmp_path / "ds", runs=("1", "2"))
    for f in (root / "sub-01" / "anat").glob("sub-01_run-2_echo-2_*"):
        f.unlink()
    subjects = collect_acquisitions(root)
    wf = _build(root, tmp_path, subjects, inversions=("ilsqr", "medi", "sstv"),
                bgremoval="vsharp")
    text = wf.get_node("single_subject_01_wf").__desc__
    assert text.count("References:") == 2
    assert "sub-01_run-1: " in text and "sub-01_run-2: " in text
    assert "2-echo" in text and "1-echo" in text
    assert "inverted with iLSQR, MEDI;" in text and "with V-SHARP," in text and "SS-TV" in text
    assert "ilsqr" not in text and "VSHARP" not in text
    # alike acquisitions: one paragraph
    same = make_skeleton(tmp_path / "same", runs=("1", "2"))
    wf2 = _build(same, tmp_path / "w2", collect_acquisitions(same))
    assert wf2.get_node("single_subject_01_wf").__desc__.count("References:") == 1


def test_dicom_export_is_a_step_of_the_graph(tmp_path):
    """``--dicom-out``: one ``export_dicom`` job per acquisition (cached, submitted like the
    other steps), fed by the stored χ and clinical maps; none without ``--dicom-out``."""
    root = make_skeleton(tmp_path / "ds", echoes=(0.004, 0.008, 0.012))
    subjects = collect_acquisitions(root)
    wf = _build(root, tmp_path, subjects, inversions=("tkd", "sstv"),
                dicom_out=tmp_path / "dicom", source_dicom=tmp_path)
    nodes = [n for n in wf._get_all_nodes() if n.name == "export_dicom"]
    assert len(nodes) == 1 and not nodes[0].run_without_submitting
    ex = nodes[0].inputs
    assert ex.kinds == ["chimap", "chimap", "r2star", "t2star", "swi", "swi_minip"]
    assert ex.methods == ["tkd", "sstv", "", "", "", ""]
    assert ex.out_dir == str(tmp_path / "dicom") and ex.source_dicom == str(tmp_path)
    edges = {(u.split(".")[-1], v.split(".")[-1]) for u, v in _edges(wf)}
    assert {("ds_chimap", "dicom_maps"), ("ds_swi", "dicom_maps"),
            ("dicom_maps", "export_dicom")} <= edges
    assert not [n for n in _build(root, tmp_path / "no", subjects)._get_all_nodes()
                if n.name == "export_dicom"]
