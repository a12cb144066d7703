"""The local Kafka broker: jars from Maven Central, run with the machine's JDK."""

from pipeline.broker.local import BrokerStatus, LocalBroker, install_jars

__all__ = ["BrokerStatus", "LocalBroker", "install_jars"]
