"""Blob stores (placeholder during the move)."""

from pixfleet.blobs.file import FileBlobStore, open_blobstore

__all__ = ["FileBlobStore", "open_blobstore"]
