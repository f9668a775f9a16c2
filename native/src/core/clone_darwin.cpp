// macOS clone_file: fclonefileat(2) (APFS), else a hole-preserving copy
// (SEEK_DATA/SEEK_HOLE + pread/pwrite, shared with Linux in posix_copy.hpp).
//
// clonefile creates its destination itself and refuses an existing one, so the clone is made
// under a name next to AtomicOutput's temporary file and renamed over it; AtomicOutput then
// links that file to `dst` on commit (never replacing an existing dst unless overwrite), or
// removes it if anything fails first.
#include "agent_swarm/clone.hpp"

#include <cerrno>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/attr.h>
#include <sys/clonefile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.hpp"
#include "posix_copy.hpp"

namespace agent_swarm {
namespace {

bool clone_unsupported(int e) {
    return e == ENOTSUP || e == EOPNOTSUPP || e == EXDEV || e == EINVAL || e == ENOSYS;
}

}  // namespace

CloneMethod clone_file(const std::string& src, const std::string& dst, CloneMode mode,
                       bool overwrite) {
    if (src.empty()) throw std::invalid_argument("source path is empty");
    if (dst.empty()) throw std::invalid_argument("destination path is empty");

    // Refuse FIFOs and devices before open(2), which would block on a FIFO.
    struct stat pre {};
    if (::stat(src.c_str(), &pre) != 0) throw_errno("cannot open", src);
    if (S_ISDIR(pre.st_mode)) throw PathError(EISDIR, "source is a directory", src);
    if (!S_ISREG(pre.st_mode)) throw PathError(EINVAL, "source is not a regular file", src);

    io::File in = io::File::open_read(src);
    struct stat st {};
    if (::fstat(in.fd(), &st) != 0) throw_errno("cannot stat", src);
    if (!S_ISREG(st.st_mode)) throw PathError(EINVAL, "source is not a regular file", src);
    const mode_t perms = st.st_mode & 07777;

    io::AtomicOutput out(dst, overwrite);

    if (mode != CloneMode::Copy) {
        const std::string clone_path = out.temp_path() + ".clone";
        if (::fclonefileat(in.fd(), AT_FDCWD, clone_path.c_str(), 0) == 0) {
            // clonefile copies the mode; set it anyway (umask-free), and flush before rename.
            int fd = ::open(clone_path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0 || ::fchmod(fd, perms) != 0 || ::fsync(fd) != 0) {
                int e = errno;
                if (fd >= 0) ::close(fd);
                ::unlink(clone_path.c_str());
                throw PathError(e, "cannot finish the clone", dst, clone_path);
            }
            ::close(fd);
            if (::rename(clone_path.c_str(), out.temp_path().c_str()) != 0) {
                int e = errno;
                ::unlink(clone_path.c_str());
                throw PathError(e, "cannot move the clone into place", dst, clone_path);
            }
            out.commit();
            return CloneMethod::Reflink;
        }
        int e = errno;
        if (mode == CloneMode::Reflink) {
            if (clone_unsupported(e))
                throw PathError(e,
                                "reflink not supported here (filesystem does not share extents, "
                                "or src and dst are on different filesystems)",
                                src, dst);
            throw PathError(e, "cannot clone", src, dst);
        }
        if (!clone_unsupported(e)) throw PathError(e, "cannot clone", src, dst);
    }

    const io::File& of = out.file();
    const uint64_t size = uint64_t(st.st_size);
    std::vector<uint8_t> buf;
    posix::for_each_data_segment(in.fd(), src, size, [&](uint64_t off, uint64_t len) {
        posix::copy_range_rw(in, of, off, len, buf);
    });
    of.truncate(size);  // trailing holes stay holes
    out.set_mode(unsigned(perms));
    out.commit();
    return CloneMethod::Copy;
}

}  // namespace agent_swarm
