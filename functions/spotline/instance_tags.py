"""Instance tags that cross from the spot-events function to the worker on that instance.

The function writes them with CreateTags; the worker reads them through IMDS
(``/latest/meta-data/tags/instance/<key>``, with ``InstanceMetadataTags: enabled`` in the
launch template). They are the way an EventBridge-only signal reaches the instance it is about:
EC2 puts the interruptible Capacity Reservation warning on EventBridge and nowhere in IMDS.
"""

from __future__ import annotations

STACK_TAG = "spotline:stack"
ROLE_TAG = "spotline:role"
# When a warning was seen for the instance (and the standby), for the standby's decisions.
INTERRUPTED_TAG = "spotline:interrupted-at"
# When the instance goes away (ISO 8601, UTC): the worker treats it like a spot notice.
TERMINATES_AT_TAG = "spotline:terminates-at"
