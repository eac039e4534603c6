"""Stage 5, evaluation: fold results and the ensemble on every split, clinical evaluation, Grad-CAM, run comparison."""
