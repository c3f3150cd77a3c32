// The item models behind spkv-studio's views, filled from GateData (no widgets; tested with
// QAbstractItemModelTester): the layer x KV-head density table with layout flags, the document list,
// and one token's u and decision in every (layer, head).
#pragma once
#include <QAbstractTableModel>
#include <utility>
#include <vector>

#include "gui/models/GateData.h"

namespace spkv::gui {

// x with `digits` decimals, or "–" when it is not finite (a head with nothing eligible).
QString formatNumber(double x, int digits);
// A byte count in MiB, or GiB from 10 GiB on, with one decimal.
QString formatMib(double bytes);

enum Roles {
  DensityRole = Qt::UserRole + 1,  // double: kept / eligible (NaN when nothing was eligible)
  GlobalRole,                      // bool: the head is global in the designed layout
  ReferenceRole,                   // bool: the head is global in the overlaid reference layout
  KeptRole,                        // bool (TokenDetailModel): the token is kept by this head
};

// Rows = layers, columns = KV heads. Display: the density with 3 decimals; tooltip: exact counts and the
// interval across documents.
class DensityModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  using QAbstractTableModel::QAbstractTableModel;
  // (L * Hkv) kept and eligible totals; lo / hi the 5th and 95th percentile across documents (may be empty).
  void setCounts(int64_t layers, int64_t heads, std::vector<int64_t> kept, std::vector<int64_t> eligible,
                 std::vector<double> lo = {}, std::vector<double> hi = {}, QString scope = {});
  void setGlobal(std::vector<uint8_t> flags);     // (L * Hkv) or empty
  void setReference(std::vector<uint8_t> flags);  // (L * Hkv) or empty
  double density(int layer, int head) const;
  std::pair<int64_t, int64_t> totals() const;  // kept and eligible over every head
  const std::vector<uint8_t>& global() const { return m_global; }

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  int64_t L_ = 0, H_ = 0;
  std::vector<int64_t> m_kept, m_eligible;
  std::vector<double> m_lo, m_hi;
  std::vector<uint8_t> m_global, m_reference;
  QString m_scope;
};

// One row per document: id, tokens, density, the selected head's density, compression (dense / SP-KV KV
// entries at its end).
class DocumentModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { Id, Tokens, Density, HeadDensity, Compression, ColumnCount };
  using QAbstractTableModel::QAbstractTableModel;
  void setCorpus(const Corpus* c, const CorpusStats* s);  // null: empty
  void setHead(int64_t layer, int64_t head);  // the head of the HeadDensity column
  double headDensity(int d) const { return m_headDensity.at(size_t(d)); }
  double compression(int d) const { return m_compression.at(size_t(d)); }
  double density(int d) const { return m_density.at(size_t(d)); }

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  void fillHeadDensity();
  std::vector<QString> m_ids;
  std::vector<int64_t> m_tokens;
  std::vector<double> m_density, m_compression, m_headDensity;
  const Corpus* m_corpus = nullptr;
  const CorpusStats* m_stats = nullptr;
  int64_t m_layer = 0, m_head = 0;
};

// One token of the selected document: rows = layers, columns = KV heads; display u, KeptRole the decision.
class TokenDetailModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  using QAbstractTableModel::QAbstractTableModel;
  void setToken(const Document* doc, int64_t t, int64_t layers, int64_t heads, const KeptRule& rule);
  int64_t token() const { return m_t; }

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  int64_t L_ = 0, H_ = 0, m_t = -1;
  std::vector<float> m_u;
  std::vector<uint8_t> m_kept;
};

}  // namespace spkv::gui
