"""``logs/CITATION.md`` and ``logs/CITATION.bib`` of a run (as fMRIPrep writes its boilerplate):
the methods text of the report and the BibTeX of exactly the references it cites.

Every entry below was checked against the publication (title, journal, year, pages); the
two network papers against their arXiv versions (``shared/papers``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: cite key of the methods text (``qsmflow.workflows.qsm.CITATIONS``) -> BibTeX entries
BIBTEX: dict[str, list[str]] = {
    "nipype": ["""@article{gorgolewski2011nipype,
  author = {Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and Clark, Dav and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.},
  title = {Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in Python},
  journal = {Frontiers in Neuroinformatics}, volume = {5}, pages = {13}, year = {2011},
  doi = {10.3389/fninf.2011.00013}}"""],
    "romeo": ["""@article{dymerska2021romeo,
  author = {Dymerska, Barbara and Eckstein, Korbinian and Bachrata, Beata and Siow, Bernard and Trattnig, Siegfried and Shmueli, Karin and Robinson, Simon Daniel},
  title = {Phase unwrapping with a rapid opensource minimum spanning tree algorithm ({ROMEO})},
  journal = {Magnetic Resonance in Medicine}, volume = {85}, number = {4}, pages = {2294--2308},
  year = {2021}, doi = {10.1002/mrm.28563}}"""],
    "mcpc3ds": ["""@article{eckstein2018aspire,
  author = {Eckstein, Korbinian and Dymerska, Barbara and Bachrata, Beata and Bogner, Wolfgang and Poljanc, Karin and Trattnig, Siegfried and Robinson, Simon Daniel},
  title = {Computationally efficient combination of multi-channel phase data from multi-echo acquisitions ({ASPIRE})},
  journal = {Magnetic Resonance in Medicine}, volume = {79}, number = {6}, pages = {2996--3006},
  year = {2018}, doi = {10.1002/mrm.26963}}"""],
    "laplacian": ["""@article{schofield2003laplacian,
  author = {Schofield, Marvin A. and Zhu, Yimei},
  title = {Fast phase unwrapping algorithm for interferometric applications},
  journal = {Optics Letters}, volume = {28}, number = {14}, pages = {1194--1196}, year = {2003},
  doi = {10.1364/OL.28.001194}}"""],
    "resharp": ["""@article{sun2014resharp,
  author = {Sun, Hongfu and Wilman, Alan H.},
  title = {Background field removal using spherical mean value filtering and {Tikhonov} regularization},
  journal = {Magnetic Resonance in Medicine}, volume = {71}, number = {3}, pages = {1151--1157},
  year = {2014}, doi = {10.1002/mrm.24765}}"""],
    "vsharp": ["""@article{li2011vsharp,
  author = {Li, Wei and Wu, Bing and Liu, Chunlei},
  title = {Quantitative susceptibility mapping of human brain reflects spatial variation in tissue composition},
  journal = {NeuroImage}, volume = {55}, number = {4}, pages = {1645--1656}, year = {2011},
  doi = {10.1016/j.neuroimage.2010.11.088}}"""],
    "lbv": ["""@article{zhou2014lbv,
  author = {Zhou, Dong and Liu, Tian and Spincemaille, Pascal and Wang, Yi},
  title = {Background field removal by solving the {Laplacian} boundary value problem},
  journal = {NMR in Biomedicine}, volume = {27}, number = {3}, pages = {312--319}, year = {2014},
  doi = {10.1002/nbm.3064}}"""],
    "pdf": ["""@article{liu2011pdf,
  author = {Liu, Tian and Khalidov, Ildar and de Rochefort, Ludovic and Spincemaille, Pascal and Liu, Jing and Tsiouris, A. John and Wang, Yi},
  title = {A novel background field removal method for {MRI} using projection onto dipole fields ({PDF})},
  journal = {NMR in Biomedicine}, volume = {24}, number = {9}, pages = {1129--1136}, year = {2011},
  doi = {10.1002/nbm.1670}}"""],
    "tkd": ["""@article{shmueli2009tkd,
  author = {Shmueli, Karin and de Zwart, Jacco A. and van Gelderen, Peter and Li, Tie-Qiang and Dodd, Stephen J. and Duyn, Jeff H.},
  title = {Magnetic susceptibility mapping of brain tissue in vivo using {MRI} phase data},
  journal = {Magnetic Resonance in Medicine}, volume = {62}, number = {6}, pages = {1510--1522},
  year = {2009}, doi = {10.1002/mrm.22135}}""", """@article{wharton2010tkd,
  author = {Wharton, Samuel and Sch{\\"a}fer, Andreas and Bowtell, Richard},
  title = {Susceptibility mapping in the human brain using threshold-based k-space division},
  journal = {Magnetic Resonance in Medicine}, volume = {63}, number = {5}, pages = {1292--1304},
  year = {2010}, doi = {10.1002/mrm.22334}}"""],
    "tikhonov": ["""@article{bilgic2014fast,
  author = {Bilgic, Berkin and Fan, Audrey P. and Polimeni, Jonathan R. and Cauley, Stephen F. and Bianciardi, Marta and Adalsteinsson, Elfar and Wald, Lawrence L. and Setsompop, Kawin},
  title = {Fast quantitative susceptibility mapping with {L1}-regularization and automatic parameter selection},
  journal = {Magnetic Resonance in Medicine}, volume = {72}, number = {5}, pages = {1444--1459},
  year = {2014}, doi = {10.1002/mrm.25029}}"""],
    "ilsqr": ["""@article{li2015ilsqr,
  author = {Li, Wei and Wang, Nian and Yu, Fang and Han, Hui and Cao, Wei and Romero, Rebecca and Tantiwongkosi, Bundhit and Duong, Timothy Q. and Liu, Chunlei},
  title = {A method for estimating and removing streaking artifacts in quantitative susceptibility mapping},
  journal = {NeuroImage}, volume = {108}, pages = {111--122}, year = {2015},
  doi = {10.1016/j.neuroimage.2014.12.043}}"""],
    "medi": ["""@article{liu2012medi,
  author = {Liu, Jing and Liu, Tian and de Rochefort, Ludovic and Ledoux, James and Khalidov, Ildar and Chen, Weiwei and Tsiouris, A. John and Wisnieff, Cynthia and Spincemaille, Pascal and Prince, Martin R. and Wang, Yi},
  title = {Morphology enabled dipole inversion for quantitative susceptibility mapping using structural consistency between the magnitude image and the susceptibility map},
  journal = {NeuroImage}, volume = {59}, number = {3}, pages = {2560--2568}, year = {2012},
  doi = {10.1016/j.neuroimage.2011.08.082}}""", """@article{liu2011medi,
  author = {Liu, Tian and Liu, Jing and de Rochefort, Ludovic and Spincemaille, Pascal and Khalidov, Ildar and Ledoux, James Robert and Wang, Yi},
  title = {Morphology enabled dipole inversion ({MEDI}) from a single-angle acquisition: comparison with {COSMOS} in human brain imaging},
  journal = {Magnetic Resonance in Medicine}, volume = {66}, number = {3}, pages = {777--783},
  year = {2011}, doi = {10.1002/mrm.22816}}"""],
    "fansi": ["""@article{milovic2018fansi,
  author = {Milovic, Carlos and Bilgic, Berkin and Zhao, Bo and Acosta-Cabronero, Julio and Tejos, Cristian},
  title = {Fast nonlinear susceptibility inversion with variational regularization},
  journal = {Magnetic Resonance in Medicine}, volume = {80}, number = {2}, pages = {814--821},
  year = {2018}, doi = {10.1002/mrm.27073}}"""],
    "sstv": ["""@article{chatnuntawech2017sstv,
  author = {Chatnuntawech, Itthi and McDaniel, Patrick and Cauley, Stephen F. and Gagoski, Borjan A. and Langkammer, Christian and Adalsteinsson, Elfar and Setsompop, Kawin and Bilgic, Berkin},
  title = {Single-step quantitative susceptibility mapping with variational penalties},
  journal = {NMR in Biomedicine}, volume = {30}, number = {4}, pages = {e3570},
  year = {2017}, doi = {10.1002/nbm.3570}}"""],
    "metaqsm": ["""@misc{liu2019metaqsm,
  author = {Liu, Juan and Koch, Kevin M.},
  title = {{Meta-QSM}: an image-resolution-arbitrary network for {QSM} reconstruction},
  year = {2019}, eprint = {1908.00206}, archivePrefix = {arXiv},
  note = {qsmflow implementation with qsmflow's trained weights}}"""],
    "qsminvnet": ["""@misc{liu2019qsminvnet,
  author = {Liu, Juan and Koch, Kevin M.},
  title = {Non-locally encoder-decoder convolutional network for whole brain {QSM} inversion},
  year = {2019}, eprint = {1904.05493}, archivePrefix = {arXiv},
  note = {QSMInvNet; qsmflow implementation with qsmflow's trained weights}}"""],
    "clearswi": ["""@article{eckstein2021clearswi,
  author = {Eckstein, Korbinian and Bachrata, Beata and Hangel, Gilbert and Widhalm, Georg and Enzinger, Christian and Barth, Markus and Trattnig, Siegfried and Robinson, Simon Daniel},
  title = {Improved susceptibility weighted imaging at ultra-high field using bipolar multi-echo acquisition and optimized image processing: {CLEAR-SWI}},
  journal = {NeuroImage}, volume = {237}, pages = {118175}, year = {2021},
  doi = {10.1016/j.neuroimage.2021.118175}}"""],
    "deepbet": ["""@article{fisch2024deepbet,
  author = {Fisch, Lukas and others},
  title = {deepbet: fast brain extraction of {T1}-weighted {MRI} using convolutional neural networks},
  journal = {Computers in Biology and Medicine}, volume = {179}, pages = {108845}, year = {2024},
  doi = {10.1016/j.compbiomed.2024.108845}}"""],
}
#: methods citing another method's paper: TV-ADMM is in Bilgic 2014, Mesa-QSM in Meta-QSM's
BIBTEX["tv"] = BIBTEX["tikhonov"]
BIBTEX["mesaqsm"] = BIBTEX["metaqsm"]


def cited_keys(methods: str, citations: dict) -> list[str]:
    """The cite keys of ``citations`` (key -> reference text) whose text ``methods`` cites,
    in the order they appear in it."""
    found = [(methods.find(text), key) for key, text in citations.items() if text in methods]
    return [key for _, key in sorted(found)]


def citation_markdown(methods_by_subject: dict[str, str]) -> str:
    """``CITATION.md``: the methods text (one section per distinct text, naming its
    participants) with its references as a numbered list."""
    groups: dict[str, list[str]] = {}
    for sub, text in methods_by_subject.items():
        if text:
            groups.setdefault(text, []).append(sub)
    parts = ["# Citing this qsmflow run",
             "",
             "The text below describes the processing and may be copied into a manuscript "
             "(it is the methods paragraph of each participant's report)."]
    for text, subs in groups.items():
        body, _, refs = text.partition("\n\nReferences: ")
        if len(groups) > 1:
            parts += ["", f"## Participants {', '.join(f'sub-{s}' for s in subs)}"]
        parts += ["", body.strip(), "", "### References", ""]
        for ref in re.split(r"; (?=\[\d+\] )", refs.rstrip(".").strip()):
            m = re.match(r"\[(\d+)\] (.*)", ref)
            parts.append(f"{m.group(1)}. {m.group(2)}" if m else f"- {ref}")
    return "\n".join(parts) + "\n"


def citation_bibtex(keys) -> str:
    """``CITATION.bib``: the BibTeX entries of ``keys`` (each entry once)."""
    entries = dict.fromkeys(e for k in keys for e in BIBTEX.get(k, []))
    return "\n\n".join(entries) + "\n"


def write_citation_files(log_dir, methods_by_subject: dict[str, str],
                         citations: dict) -> list[Path]:
    """Write ``<log_dir>/CITATION.md`` and ``CITATION.bib`` (atomically) → their paths."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for text in methods_by_subject.values()
                              for k in cited_keys(text or "", citations)))
    out = []
    for name, text in (("CITATION.md", citation_markdown(methods_by_subject)),
                       ("CITATION.bib", citation_bibtex(keys))):
        path = log_dir / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=log_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        out.append(path)
    return out
