// Parser of macOS's /var/db/dhcpd_leases (see asvz/leases.hpp for the format).
//
// Modelled on tart (Sources/tart/MACAddressResolver/Leases.swift: the {/} block state machine,
// leading blanks dropped, a value is everything after the first '='; Lease.swift: needs
// hw_address "1,<mac>", ip_address and lease "0x<hex expiry>"; expired leases dropped, the
// later expiry wins for a MAC seen twice) and on the writer, bootpd's PLCache_write/_read in
// Apple's bootp/bootplib/NICache.c (tab-indented "key=value" lines, "key" alone for a property
// without a value, the file replaced by rename, lines read with a 1024-byte buffer).
// Differences, because the text is untrusted here: a malformed block is skipped and parsing
// resumes at the next "{" (tart throws for the whole file); a key without '=' is ignored
// (tart throws); a MAC octet that is not 1-2 hex digits drops the lease (tart's MACAddress
// force-unwraps UInt8(_:radix:) and would crash); a block with a repeated ip_address,
// hw_address or lease is ambiguous and skipped; IPv4 parts with leading zeros are refused
// (inet_aton would read them as octal).
#include "asvz/leases.hpp"

#include <algorithm>
#include <cerrno>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace asvz {

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "198.51.100.7": four decimal parts 0-255, no sign, no leading zero (except "0" itself).
bool valid_ipv4(const std::string& s) {
  if (s.empty() || s.size() > 15) return false;
  int parts = 0;
  std::size_t i = 0;
  while (true) {
    std::size_t start = i;
    int value = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 3) {
      value = value * 10 + (s[i] - '0');
      ++i;
    }
    std::size_t len = i - start;
    if (len == 0 || value > 255 || (len > 1 && s[start] == '0')) return false;
    ++parts;
    if (i == s.size()) break;
    if (s[i] != '.' || parts == 4) return false;
    ++i;
  }
  return parts == 4;
}

// "0x66aa11bb" (the 0x is optional, as with tart's SwiftRadix `.hex`): at most 15 significant
// hex digits, so the value fits a long long with room to spare.
std::optional<long long> parse_hex_epoch(const std::string& s) {
  std::size_t i = 0;
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) i = 2;
  if (i == s.size() || s.size() - i > 32) return std::nullopt;
  long long value = 0;
  int significant = 0;
  for (; i < s.size(); ++i) {
    int d = hex_value(s[i]);
    if (d < 0) return std::nullopt;
    if (value == 0 && d == 0) continue;
    if (++significant > 15) return std::nullopt;
    value = value * 16 + d;
  }
  return value;
}

// A host name worth keeping: printable ASCII, at most 255 bytes.
std::string clean_name(const std::string& s) {
  if (s.size() > 255) return {};
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return {};
  }
  return s;
}

// The fields of one block while it is read.
struct Block {
  bool bad = false;
  std::size_t keys = 0;
  int n_ip = 0, n_hw = 0, n_lease = 0;
  std::string ip, hw, lease, name;
  bool has_name = false;
};

std::optional<Lease> finish(const Block& b) {
  if (b.bad || b.n_ip != 1 || b.n_hw != 1 || b.n_lease != 1) return std::nullopt;
  if (!valid_ipv4(b.ip)) return std::nullopt;
  // hw_address=<ARP hardware type>,<address>; only Ethernet (ARPHRD_ETHER = 1) is a MAC.
  std::size_t comma = b.hw.find(',');
  if (comma == std::string::npos || b.hw.compare(0, comma, "1") != 0) return std::nullopt;
  std::optional<std::string> mac = normalize_mac(b.hw.substr(comma + 1));
  if (!mac) return std::nullopt;
  std::optional<long long> expires = parse_hex_epoch(b.lease);
  if (!expires) return std::nullopt;
  return Lease{b.ip, *mac, *expires, clean_name(b.name)};
}

// Applies one non-blank line inside a block.
void add_line(Block& b, const std::string& line) {
  if (++b.keys > kMaxLeaseKeys) {
    b.bad = true;
    return;
  }
  std::size_t eq = line.find('=');
  if (eq == std::string::npos) return;  // a property without a value (bootpd writes "key")
  if (eq == 0) {
    b.bad = true;
    return;
  }
  std::string key = line.substr(0, eq);
  std::string value = line.substr(eq + 1);
  if (key == "ip_address") {
    ++b.n_ip;
    b.ip = value;
  } else if (key == "hw_address") {
    ++b.n_hw;
    b.hw = value;
  } else if (key == "lease") {
    ++b.n_lease;
    b.lease = value;
  } else if (key == "name" && !b.has_name) {
    b.has_name = true;
    b.name = value;
  }
}

}  // namespace

std::optional<std::string> normalize_mac(const std::string& mac) {
  if (mac.empty() || mac.size() > 17) return std::nullopt;
  std::string out;
  out.reserve(17);
  static const char digits[] = "0123456789abcdef";
  std::size_t i = 0;
  for (int octet = 0; octet < 6; ++octet) {
    if (octet > 0) {
      if (i >= mac.size() || mac[i] != ':') return std::nullopt;
      ++i;
      out.push_back(':');
    }
    int value = 0;
    std::size_t start = i;
    while (i < mac.size() && i - start < 2 && hex_value(mac[i]) >= 0) {
      value = value * 16 + hex_value(mac[i]);
      ++i;
    }
    if (i == start) return std::nullopt;
    out.push_back(digits[value >> 4]);
    out.push_back(digits[value & 15]);
  }
  if (i != mac.size()) return std::nullopt;
  return out;
}

std::vector<Lease> parse_leases(const std::string& text) {
  std::vector<Lease> leases;
  // Only complete lines of the first kMaxLeasesText bytes: a line cut at the bound is dropped.
  std::size_t end = text.size();
  if (end > kMaxLeasesText) {
    std::size_t nl = text.rfind('\n', kMaxLeasesText - 1);
    end = nl == std::string::npos ? 0 : nl + 1;
  }
  bool in_block = false;
  Block block;
  std::size_t pos = 0;
  while (pos < end && leases.size() < kMaxLeases) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos || nl > end) nl = end;
    std::size_t b = pos, e = nl;
    pos = nl + 1;
    if (e - b > kMaxLeaseLine) {  // too long to be bootpd's; spoils the block it is in
      block.bad = true;
      continue;
    }
    while (b < e && is_blank(text[b])) ++b;
    while (e > b && is_blank(text[e - 1])) --e;
    if (b == e) continue;
    std::string line = text.substr(b, e - b);
    if (line == "{") {
      // A "{" inside a block: the open block never ended; drop it and start again here.
      in_block = true;
      block = Block();
    } else if (line == "}") {
      if (in_block) {
        if (std::optional<Lease> lease = finish(block)) leases.push_back(std::move(*lease));
      }
      in_block = false;
    } else if (in_block) {
      add_line(block, line);
    }
    // Text outside a block is ignored.
  }
  return leases;  // a block still open at the end (a truncated file) is dropped
}

std::optional<Lease> find_lease(const std::string& leases_text, const std::string& mac,
                                long long now_epoch) {
  std::optional<std::string> want = normalize_mac(mac);
  if (!want) return std::nullopt;
  std::optional<Lease> best;
  for (Lease& lease : parse_leases(leases_text)) {
    if (lease.mac != *want || lease.expires <= now_epoch) continue;  // expired at `now`
    if (!best || lease.expires > best->expires) best = std::move(lease);
  }
  return best;
}

std::optional<std::string> lease_address(const std::string& leases_text, const std::string& mac,
                                         long long now_epoch) {
  std::optional<Lease> lease = find_lease(leases_text, mac, now_epoch);
  if (!lease) return std::nullopt;
  return lease->ip;
}

std::optional<std::string> read_leases_file(const std::string& path, int* err) {
  auto fail = [err](int e) -> std::optional<std::string> {
    if (err) *err = e;
    return std::nullopt;
  };
  // O_NONBLOCK: opening a FIFO planted at the path must not hang; regular files ignore it.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return fail(errno);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int e = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    close(fd);
    return fail(e);
  }
  // One byte past the bound, so parse_leases sees the file was longer and drops the line cut.
  const std::size_t limit = kMaxLeasesText + 1;
  std::string text;
  char buf[65536];
  while (text.size() < limit) {
    std::size_t want = std::min(sizeof buf, limit - text.size());
    ssize_t n = read(fd, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return fail(e);
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  if (err) *err = 0;
  return text;
}

}  // namespace asvz
