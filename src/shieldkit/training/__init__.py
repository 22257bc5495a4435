"""Training: the standard (teacher) trainer, robust objectives, GradRefine and the robust trainer."""
