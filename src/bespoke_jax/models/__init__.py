"""Models: the closed-form Gaussian mixture, the shipped networks and pretrained()."""
