"""What one builds on a teacher and its one-step student: ControlNet (control by an image), ReVersion (a learned
relation token) and DreamBooth (a subject adapter). Each module trains, generates and evaluates; the commands
and the web UI call these functions."""
