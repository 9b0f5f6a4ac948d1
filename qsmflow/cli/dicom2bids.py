"""``qsmflow dicom2bids DICOM_DIR BIDS_DIR --subject S [--session T]``: scanner DICOMs → BIDS raw
(without patient identification unless ``--keep-patient-info``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qsmflow dicom2bids", allow_abbrev=False,
        description="Find the multi-echo gradient-echo series in a folder of DICOM files and write them "
                    "as BIDS raw data (echo-N_part-{mag,phase}_MEGRE.nii.gz, phase in rad). Other series "
                    "are listed and skipped. The DICOM folder is only read. No file of the BIDS dataset holds "
                    "patient identification (names, IDs, birth date, sex, age, institution, study dates).")
    p.add_argument("dicom_dir", help="folder with DICOM files (searched recursively, any order)")
    p.add_argument("bids_dir", help="BIDS dataset to create or add the subject/session to")
    p.add_argument("--subject", required=True, help="subject label without 'sub-' (letters and digits; required)")
    p.add_argument("--session", help="session label without 'ses-' (letters and digits; default: no "
                                     "session level)")
    p.add_argument("--echo-times", help="comma-separated echo times in ms, only for exports whose headers "
                                        "repeat the first echo's EchoTime (GE research sequences; default: "
                                        "from the headers)")
    p.add_argument("--keep-patient-info", action="store_true",
                   help="also keep the patient and visit identification (name, ID, birth date, sex, study "
                        "ID/date/time, accession number) for a later 'qsmflow ... --dicom-out' without the "
                        "DICOM folder, in BIDS_DIR/sourcedata/qsmflow-private/ (listed in .bidsignore; do "
                        "not share it). Default: off, no file of BIDS_DIR identifies the patient; the "
                        "export then reads it back from the DICOM folder given to --source-dicom")
    p.add_argument("--no-patient-info", action="store_true",
                   help="deprecated, does nothing: leaving patient information out is now the default")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: progress bars on)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from qsmflow.dicom.convert import dicom_to_bids

    if args.no_patient_info:
        print("qsmflow dicom2bids: warning: --no-patient-info is deprecated and does nothing (patient "
              "information is left out by default)", file=sys.stderr)

    try:
        tes = None
        if args.echo_times:
            try:
                tes = [float(t) for t in args.echo_times.split(",")]
            except ValueError:
                raise ValueError(f"--echo-times {args.echo_times!r}: give numbers in ms, e.g. 3,6,9") from None
        res = dicom_to_bids(args.dicom_dir, args.bids_dir, args.subject, args.session, echo_times_ms=tes,
                            keep_patient_info=args.keep_patient_info, progress=not args.quiet)
    except (ValueError, OSError) as exc:
        print(f"qsmflow dicom2bids: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(res['files'])} files for {len(res['acquisitions'])} acquisition(s) into {args.bids_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
