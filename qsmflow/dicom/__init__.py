"""DICOM in and out: scanner folders → BIDS raw MEGRE (:func:`dicom_to_bids`), χ maps → a new
DICOM series derived from the source (:func:`export_chimap`)."""

from .convert import dicom_to_bids, find_acquisitions, load_acquisition, read_series_volume
from .export import export_chimap
from .scan import scan_folder

__all__ = ["dicom_to_bids", "export_chimap", "find_acquisitions", "load_acquisition",
           "read_series_volume", "scan_folder"]
