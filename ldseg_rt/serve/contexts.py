"""What the DICOM node negotiates: the transfer syntaxes it can decode and the storage SOP classes
it accepts.

Modalities and PACS send JPEG Lossless, JPEG-LS, JPEG 2000, RLE and Deflate as well as
uncompressed data; a node that offers only uncompressed syntaxes makes every sender decompress
first, or fail. The node offers each syntax for which pydicom has a working pixel data decoder
here (the optional plugins pylibjpeg-*, pyjpegls, pillow decide that), and nothing it could not
decode: an image accepted in a syntax the node cannot decode would only fail later, in the work
queue, after the sender was told it was stored.
"""
import logging
import re

import pydicom.uid as uid
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

logger = logging.getLogger(__name__)

# Preferred first: as acceptor, pynetdicom takes the first of the node's syntaxes that the
# requestor proposes in a context, so a sender that offers both sends uncompressed data and the
# node needs no decoder. Explicit VR first: it keeps the VRs of private and unknown elements, which
# Implicit VR loses. Explicit VR Big Endian is retired, but pydicom reads it and old modalities
# still send it.
UNCOMPRESSED = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian)
# Lossless before lossy. Deflate (zlib) is inflated by pydicom when the file is read.
COMPRESSED = (
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGLSLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEG2000Lossless,
    uid.RLELossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.JPEGLSNearLossless,
    uid.JPEG2000,
    uid.HTJ2K,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
)

_RT = re.compile(r"\bRT\b")


def _decodable(transfer_syntax: UID) -> bool:
    try:
        return get_decoder(transfer_syntax).is_available
    except NotImplementedError:  # pydicom has no decoder for this syntax at all
        return False


def decodable_transfer_syntaxes() -> list[UID]:
    """The transfer syntaxes whose pixel data pydicom decodes here: uncompressed first, then the
    lossless compressed ones, then the lossy ones (the order the node prefers them in)."""
    syntaxes = [ts for ts in UNCOMPRESSED if _decodable(ts)]
    for ts in COMPRESSED:
        if _decodable(ts):
            syntaxes.append(ts)
        else:
            logger.info("not offering %s: no pixel data decoder is installed for it", ts.name)
    return syntaxes


def image_storage_contexts() -> list[PresentationContext]:
    """Contexts for AE.supported_contexts: every Storage SOP class pynetdicom knows
    (AllStoragePresentationContexts) with every decodable transfer syntax, so that whatever a
    series holds is taken (what is not an image is set aside, never refused at association),
    plus Verification so senders can C-ECHO the node."""
    # An acceptor's list is not capped: the limit of 128 (odd context IDs 1..255) binds what one
    # requestor proposes in one association, and pynetdicom enforces it only on
    # AE.requested_contexts.
    syntaxes = decodable_transfer_syntaxes()
    contexts = [build_context(cx.abstract_syntax, syntaxes) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification, syntaxes))
    return contexts


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether instances of this SOP class are images the node can segment, by pydicom's
    registered name ("... Image Storage"). Structured reports, presentation states, key objects,
    segmentations, parametric maps, encapsulated documents and RT objects (RT Image included: a
    portal image is not segmented) are kept aside, as are unknown and private SOP classes."""
    name = UID(sop_class_uid).name  # an unknown UID's name is the UID itself
    return "Image Storage" in name and not _RT.search(name)
