"""Exceptions raised by framestream.

FramestreamError
 ├── ConfigError          a config file, variable or flag is invalid
 ├── SourceError          a camera source cannot be opened or read
 ├── FrameFormatError     a frame's pixels cannot be turned into a 3-channel
 │                        8-bit image (16-bit or float without a scaling option)
 ├── BrokerError          the local broker cannot be set up, started or stopped
 └── MessageError         a Kafka message is not a valid framestream message
"""


class FramestreamError(Exception):
    """Base class of every error framestream raises on purpose."""


class ConfigError(FramestreamError):
    """A config value is missing, of the wrong type or out of range."""


class SourceError(FramestreamError):
    """A camera, video file or image folder cannot be opened or read."""


class FrameFormatError(FramestreamError):
    """A frame's array has a shape or depth framestream cannot encode."""


class BrokerError(FramestreamError):
    """The local Kafka broker failed to install, start or stop."""


class MessageError(FramestreamError):
    """A Kafka message lacks headers, or its headers or value are malformed."""
