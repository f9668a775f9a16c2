// The guest's IPv4 address from the DHCP leases of macOS's NAT (vmnet's bootpd writes
// /var/db/dhcpd_leases). Portable C++17 so it is tested on Linux.
//
// Format (bootpd's PLCache_write in Apple's bootp/bootplib/NICache.c; parsed the same way by
// tart's Sources/tart/MACAddressResolver/Leases.swift and Lease.swift):
//   {
//   	name=debian
//   	ip_address=192.168.64.5
//   	hw_address=1,52:54:0:12:34:56     <- ARP hardware type 1 (Ethernet), then the MAC with
//   	identifier=1,52:54:0:12:34:56        octets printed without a leading zero
//   	lease=0x66aa11bb                  <- expiry, hex seconds since the epoch
//   }
// The content is treated as untrusted: lengths are bounded, malformed blocks are skipped
// (tart instead rejects the whole file), and nothing here throws.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace asvz {

struct Lease {
  std::string ip;     // validated dotted quad, each part 0-255 without leading zeros
  std::string mac;    // normalized: six lowercase two-digit octets, "52:54:00:12:34:56"
  long long expires;  // expiry, seconds since the epoch
  std::string name;   // the client's host name ("" when absent or not printable)
};

// Bounds on the untrusted input (bootpd reads lines with a 1024-byte buffer).
constexpr std::size_t kMaxLeasesText = 4u << 20;   // bytes parsed; the rest is ignored
constexpr std::size_t kMaxLeaseLine = 1024;        // a longer line spoils its block
constexpr std::size_t kMaxLeaseKeys = 64;          // key=value lines per block
constexpr std::size_t kMaxLeases = 65536;          // leases returned

// All well-formed leases, expired ones included, in file order. A block is kept when it has
// exactly one ip_address (valid IPv4), hw_address (type 1 + a valid MAC) and lease (hex).
std::vector<Lease> parse_leases(const std::string& text);

// "1:2:A:b:0c:FF" -> "01:02:0a:0b:0c:ff": six ':'-separated octets of 1-2 hex digits.
std::optional<std::string> normalize_mac(const std::string& mac);

// The newest unexpired lease (expires > now_epoch) of `mac`: the latest expiry wins; among
// equal expiries the first in the file (bootpd keeps its most recently used entry first).
std::optional<Lease> find_lease(const std::string& leases_text, const std::string& mac,
                                long long now_epoch);

// find_lease(...)->ip.
std::optional<std::string> lease_address(const std::string& leases_text, const std::string& mac,
                                         long long now_epoch);

// Reads at most kMaxLeasesText + 1 bytes of a regular file (parse_leases ignores what lies past
// kMaxLeasesText). nullopt when it cannot be read;
// `err` (optional) gets errno then (ENOENT: no lease file yet, as before the NAT's first lease).
std::optional<std::string> read_leases_file(const std::string& path, int* err = nullptr);

}  // namespace asvz
