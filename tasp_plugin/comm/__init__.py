"""Communication: the ``Communicator`` interface and its implementations (process group, routed
``CPGroups``, threads, loopback, some ranks of another communicator), and one step's exchange of a ring
schedule over any of them."""

from .communicator import Communicator, Handle, ProcessGroupCommunicator, RoutedCommunicator, as_communicator
from .emulation import EmulatedGroup, LoopbackGroup, ThreadGroup
from .exchange import TRANSPORTS, RingExchange
from .peer_memory import PeerMemory, symmetric_memory_available
from .subgroup import SubCommunicator

__all__ = ["TRANSPORTS", "Communicator", "EmulatedGroup", "Handle", "LoopbackGroup", "PeerMemory",
           "ProcessGroupCommunicator", "RingExchange", "RoutedCommunicator", "SubCommunicator", "ThreadGroup",
           "as_communicator", "symmetric_memory_available"]
