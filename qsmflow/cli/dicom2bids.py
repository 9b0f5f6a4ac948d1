"""``qsmflow dicom2bids DICOM_DIR BIDS_DIR --subject S [--session T]``: scanner DICOMs → BIDS raw."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qsmflow dicom2bids",
        description="Find the multi-echo gradient-echo series in a folder of DICOM files and write them "
                    "as BIDS raw data (echo-N_part-{mag,phase}_MEGRE.nii.gz, phase in rad). Other series "
                    "are listed and skipped. The DICOM folder is only read.")
    p.add_argument("dicom_dir", help="folder with DICOM files (searched recursively, any order)")
    p.add_argument("bids_dir", help="BIDS dataset to create or add the subject/session to")
    p.add_argument("--subject", required=True, help="subject label without 'sub-' (letters and digits)")
    p.add_argument("--session", help="session label without 'ses-' (letters and digits)")
    p.add_argument("--echo-times", help="comma-separated echo times in ms, only for exports whose headers "
                                        "repeat the first echo's EchoTime (GE research sequences)")
    p.add_argument("--no-patient-info", action="store_true",
                   help="do not copy PatientID/Name/BirthDate/Sex into the sidecars (a later DICOM export "
                        "then needs the source DICOM folder to file the χ map under the patient)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from qsmflow.dicom.convert import dicom_to_bids

    try:
        tes = None
        if args.echo_times:
            try:
                tes = [float(t) for t in args.echo_times.split(",")]
            except ValueError:
                raise ValueError(f"--echo-times {args.echo_times!r}: give numbers in ms, e.g. 3,6,9") from None
        res = dicom_to_bids(args.dicom_dir, args.bids_dir, args.subject, args.session, echo_times_ms=tes,
                            record_patient=not args.no_patient_info, progress=not args.quiet)
    except (ValueError, OSError) as exc:
        print(f"qsmflow dicom2bids: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(res['files'])} files for {len(res['acquisitions'])} acquisition(s) into {args.bids_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
