"""Video in and out through ffmpeg pipes, in bounded memory. One job per module:

* `probe`: check a face file before any model work and describe it (`MediaInfo`).
* `decode`: stream BGR frames out of ffmpeg's stdout, one at a time, at a constant frame rate.
* `schedule`: extend a short video to the audio's length (loop or pingpong).
* `encode`: stream BGR frames into ONE ffmpeg that encodes H.264 and muxes the audio (`FrameWriter`).
* `label`: the watermark text burnt into encoded frames.
* `image` and `process`: decoding one still picture; running ffmpeg and reading its pipes.

Every ffmpeg call is an argv list; a failing ffmpeg raises with the tail of its stderr.
Import from the submodules; this package re-exports nothing.
"""
