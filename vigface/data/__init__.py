"""Readers and writers for face datasets."""

from vigface.data.imagefolder import AlignedFaceFolder, DatasetError, read_landmarks_csv
from vigface.data.recordio import FaceRecordDataset, write_face_recordio
from vigface.data.verification import load_bin, write_bin

__all__ = [
    "AlignedFaceFolder",
    "DatasetError",
    "FaceRecordDataset",
    "load_bin",
    "read_landmarks_csv",
    "write_bin",
    "write_face_recordio",
]
