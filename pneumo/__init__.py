"""pneumo: fold-parallel cross-validated timm ResNets for pediatric chest X-ray pneumonia."""

__version__ = "0.1.0"
