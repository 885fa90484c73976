"""Files in and out: reading photos (EXIF, HEIC) and video frames, writing the mesh formats, publishing a job's folder
in one rename, and redacting secrets from what is written."""
