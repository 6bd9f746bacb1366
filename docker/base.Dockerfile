# The local Python 3.9 base image for hosts where no registry serves one (`make base-image`):
# a Debian 11 (bullseye, python3 = 3.9) root filesystem made by mmdebstrap from Debian's packages,
# imported as an image. Build context: the folder holding rootfs.tar. Hosts that can pull images
# keep the public default (python:3.9-slim-bullseye) and never need this.
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["python3"]
