"""Interoperability with other tools' dataset formats (nnU-Net v2 raw datasets)."""

from laworder.interop.nnunet import export_nnunet_dataset, verify_nnunet_dataset

__all__ = ["export_nnunet_dataset", "verify_nnunet_dataset"]
