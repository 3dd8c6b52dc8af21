"""Training a family: settings (config), the update and validation steps (steps), the loop and
its hooks (loop, hooks), and the ground truth a run needs (data)."""
